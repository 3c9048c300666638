# Two commands do everything on a fresh machine:  make demo  |  make test
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3

.PHONY: demo test bench install clean

install: $(VENV)/.installed

# devtools/ (what tests, demo and benchmarks share; never in the wheel) goes in editable
# after the project, so `import devtools` works from any script and directory.
$(VENV)/.installed: requirements.txt requirements-test.txt setup.cfg pyproject.toml devtools/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-test.txt
	$(PY) -m pip install --quiet --no-deps -e .
	$(PY) -m pip install --quiet --no-deps -e devtools
	touch $@

demo: install
	$(PY) demo/demo.py $(if $(WEIGHTS),--weights $(WEIGHTS))

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

bench: install
	$(PY) benchmarks/efficientdet_e2e.py

clean:
	rm -rf $(VENV) demo-output .pytest_cache
