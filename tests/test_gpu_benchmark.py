"""benchmarks/gpu.sh, the GPU check, as far as a machine without a GPU can run it:
its arguments, its refusal without a GPU, the CPU smoke run of every code path (JSON,
Markdown), and the README block it rewrites."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "benchmarks" / "gpu.sh"


def gpu_sh(*args: str, env: dict[str, str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHON": sys.executable, **(env or {})}, cwd="/")


def bench_module():
    spec = importlib.util.spec_from_file_location("gpu_benchmark", REPO / "benchmarks" / "gpu.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("args, message", [
    (["--coefs", "0,9"], "--coefs: a comma-separated list, got '0,9'"),
    (["--rounds", "0"], "--rounds and --sam-batch must be at least 1"),
    (["--budget-s", "-5"], "--budget-s positive"),
    (["--device", "tpu"], "argument --device: invalid choice: 'tpu'"),
])
def test_bad_arguments_are_usage_errors(args, message):
    done = gpu_sh(*args, timeout=120)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr and done.stderr.startswith("usage: benchmarks/gpu.sh")


def test_help_and_a_python_without_the_project():
    done = gpu_sh("--help", timeout=120)
    assert done.returncode == 0 and "--smoke" in done.stdout and "--budget-s" in done.stdout
    done = gpu_sh(env={"PYTHON": "/usr/bin/false"}, timeout=60)
    assert done.returncode == 2
    assert "lacks torch, smvision or devtools: run make install" in done.stderr


def test_without_a_gpu_it_says_so_and_records_the_start_up_decision(tmp_path):
    if importlib.util.find_spec("torch") and __import__("torch").cuda.is_available():
        pytest.skip("this machine has a GPU")
    readme_before = (REPO / "README.md").read_text()
    done = gpu_sh("--out", str(tmp_path), timeout=300)
    assert done.returncode == 1, done.stderr
    assert "no CUDA device here" in done.stderr and "`--smoke` runs every code path on the CPU" in done.stderr
    (result,) = tmp_path.glob("gpu-*.json")
    startup = json.loads(result.read_text())["startup"]
    assert startup["compat"] is False and startup["probe"]["ok"] is False
    assert "no NVIDIA GPU visible, serving on the CPU" in startup["decision"]
    assert any("GPU start-up: " in line for line in startup["serve_log"]) and startup["serve"].startswith("ready in")
    assert (REPO / "README.md").read_text() == readme_before


def test_smoke_run_measures_every_section_on_the_cpu(tmp_path):
    done = gpu_sh("--smoke", "--out", str(tmp_path))
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    (result,) = tmp_path.glob("gpu-*.json")
    data = json.loads(result.read_text())
    assert data["smoke"] is True and data["device"] == "cpu"
    sam = {(r["attention"], r["batch"]): r for r in data["sam"]}
    assert set(sam) == {("eager", 1), ("eager", 2), ("sdpa", 1), ("sdpa", 2)}
    assert all(r["ms_per_image"] > 0 and r["cosine_vs_fp32"] > 0.9999 for r in sam.values())  # sdpa: same maths
    assert [(r["coef"], r["batch"]) for r in data["efficientdet"]] == [(0, 1), (0, 2)]
    (fidelity,) = data["efficientdet_fidelity"]
    assert fidelity["max_score_diff"] == 0 and fidelity["found_within_1px"] == fidelity["detections_fp32"] > 0
    assert {"what": "torch.compile", "why": "--smoke"} in data["skipped"]
    table = (tmp_path / result.name.replace(".json", ".md")).read_text()
    assert "(smoke run on CPU: not GPU numbers)" in table
    assert "| vit_tiny_test | fp32 | sdpa | 2 |" in table and "| D0 | fp32 | 1 |" in table


def test_table_rendering_and_readme_block(tmp_path):
    bench = bench_module()
    data = {
        "when": "20270101T000000Z", "smoke": False, "host": {"torch": "2.14.1+cu126", "cuda": "12.6"},
        "startup": {"driver": "535.183.01", "decision": "NVIDIA driver 535.183.01 ...; CUDA forward compatibility on",
                    "probe": {"ok": True, "devices": ["NVIDIA L4"]}, "serve": "ready in 9.1 s"},
        "sam": [{"model": "vit_h", "precision": "fp16", "attention": "sdpa", "batch": 8, "ms_per_image": 120.5,
                 "images_per_s": 8.3, "cosine_vs_fp32": 0.99998, "peak_gib": 9.5},
                {"model": "vit_h", "precision": "fp32", "attention": "eager", "batch": 8, "error": "out of memory (x)"}],
        "sam_compile": {"eager_ms": 30.0, "compiled_ms": 25.0, "compile_s": 60.0, "speedup": 1.2,
                        "break_even_images": 12000, "pays": True},
        "efficientdet": [{"coef": 7, "precision": "fp16", "batch": 8, "images_per_s": 40.2, "ms_per_batch": 199.0,
                          "peak_gib": 6.1}],
        "efficientdet_fidelity": [{"coef": 7, "candidate": "fp16", "max_score_diff": 0.0031,
                                   "max_regression_diff": 0.02, "found_within_1px": 190, "detections_fp32": 200}],
        "skipped": [{"what": "EfficientDet D4", "why": "10 s left"}],
    }
    table = bench.markdown(data)
    assert "Measured 20270101T000000Z: NVIDIA L4, NVIDIA driver 535.183.01, torch 2.14.1+cu126 (CUDA 12.6)." in table
    assert "| vit_h | fp16 | sdpa | 8 | 120.5 | 8.3 | 0.99998 | 9.5 |" in table
    assert "| vit_h | fp32 | eager | 8 | out of memory (x) | | | |" in table
    assert "60.0 s to compile, 30.0 -> 25.0 ms (1.2x, even after 12000 images): pays." in table
    assert "| D7 | fp16 | 8 | 40.2 | 199.0 | 6.1 |" in table
    assert "| D7 | fp16 | 3.10e-03 | 2.00e-02 | 190 / 200 |" in table
    assert "Skipped: EfficientDet D4 (10 s left)." in table
    readme = tmp_path / "README.md"
    readme.write_text(f"before\n{bench.README_START}\nold table\n{bench.README_END}\nafter\n")
    bench.update_readme(readme, table)
    text = readme.read_text()
    assert text.startswith(f"before\n{bench.README_START}\nMeasured ") and text.endswith(f"{bench.README_END}\nafter\n")
    assert "old table" not in text
    readme.write_text("no markers\n")
    with pytest.raises(SystemExit, match="no <!-- gpu-benchmark:start -->"):
        bench.update_readme(readme, table)
    assert bench.README_START in (REPO / "README.md").read_text(), "README.md lacks the block gpu.sh writes"
