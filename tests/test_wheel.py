"""`pip install .` holds what serving and deploying need, and no development tool.

The wheel is built (`pip wheel --no-deps --no-build-isolation`) from exactly what the
Dockerfiles copy, as the images build it. Its files hold no devtools, toolkit harness,
local S3, moto user or random weights. Installed with --no-deps into a fresh venv, whose
dependencies come from this venv's site-packages through a .pth file holding a plain path
(which does not run this venv's editable finders: neither the checkout's smvision nor
devtools is importable there), it still serves and deploys: `serve` answers a real
request with 200, and `smvision deploy create` / `deploy list` work against moto.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from dataclasses import dataclass
from pathlib import Path

import boto3
import pytest
import requests

import moto_sagemaker
from conftest import BUCKET
from smvision.deploy.server_process import ServerProcess, free_port
from test_dockerfiles import parse

REPO = Path(__file__).resolve().parent.parent
ROLE = "arn:aws:iam::123456789012:role/SageMakerRole"
DATA = "s3://smvision-models/d0/dev/20261126T120000Z/model.tar.gz"

#: names no file of the wheel may carry
FORBIDDEN_NAMES = ("devtools", "toolkit_harness", "local_s3", "moto", "setup_toolkit_venv", "launch_toolkit",
                   "weights.py")
#: what no module of the wheel may import or define
FORBIDDEN_CODE = re.compile(
    r"^\s*(?:from|import)\s+(?:devtools|moto|skimage)\b|^\s*def\s+(?:random_state_dict|trained_like_efficientdet)\b",
    re.MULTILINE,
)


def image_sources(dockerfile: Path) -> list[str]:
    """What the Dockerfile's builder stage copies from the build context."""
    sources = []
    for copy in parse(dockerfile)[0].all("COPY"):
        words = [w for w in copy.args.split() if not w.startswith("--")]
        sources += [w.rstrip("/") for w in words[:-1]]
    return sources


def build_wheel(repo: Path, workdir: Path) -> Path:
    """The wheel `pip wheel --no-deps --no-build-isolation .` makes from the sources that
    Dockerfile.cpu copies (a copy of them in workdir/src: nothing is written to the checkout)."""
    src = workdir / "src"
    for name in image_sources(repo / "Dockerfile.cpu"):
        source, target = repo / name, src / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(source, target)
    out = workdir / "dist"
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
         "-w", str(out), "."],
        cwd=src, capture_output=True, text=True, timeout=600,
        env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    (wheel,) = out.glob("smvision-*.whl")
    return wheel


def development_files(wheel: Path) -> list[str]:
    """The wheel's files that are development tools: by name, or by what their code imports
    or defines."""
    found = []
    with zipfile.ZipFile(wheel) as archive:
        for name in archive.namelist():
            if any(word in name.lower() for word in FORBIDDEN_NAMES):
                found.append(name)
            elif name.endswith(".py") and FORBIDDEN_CODE.search(archive.read(name).decode("utf-8", "replace")):
                found.append(f"{name} (imports or defines a development tool)")
    return found


@dataclass
class FreshVenv:
    root: Path

    @property
    def bin(self) -> Path:
        return self.root / "bin"

    def run(self, *argv: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, "PYTHONNOUSERSITE": "1"}, cwd=self.root)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    return build_wheel(REPO, tmp_path_factory.mktemp("wheel"))


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> FreshVenv:
    """A fresh venv with only the wheel installed (--no-deps); its dependencies come from
    this venv's site-packages, named by a plain path line in a .pth file."""
    fresh = FreshVenv(tmp_path_factory.mktemp("fresh") / "venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(fresh.root)], check=True, timeout=120)
    python = fresh.bin / "python"
    # the wheel first, while the fresh venv sees nothing else (pip would otherwise find
    # this venv's editable smvision and call the requirement satisfied)
    done = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", "-q", str(wheel)],
        capture_output=True, text=True, timeout=300, env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    site = Path(fresh.run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").stdout.strip())
    ours = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    (site / "project-dependencies.pth").write_text("".join(f"{path}\n" for path in ours))
    return fresh


def test_the_wheel_holds_no_development_tool(wheel):
    assert development_files(wheel) == []
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        metadata = next(n for n in names if n.endswith(".dist-info/METADATA"))
        requires = [line for line in archive.read(metadata).decode().splitlines() if line.startswith("Requires-Dist:")]
    assert "smvision/deploy/server_process.py" in names and "smvision/container/serve.py" in names
    assert not [line for line in requires if re.search(r"\b(moto|scikit-image|pytest)\b", line)], requires


def test_the_fresh_venv_imports_the_wheel_and_no_development_tool(venv):
    probe = ("import importlib.util as u, json, smvision\n"
             "names = ('devtools', 'smvision.deploy.local_s3')\n"
             "print(json.dumps([smvision.__file__] + [bool(u.find_spec(n)) for n in names]))")
    done = venv.run(venv.bin / "python", "-c", probe)
    assert done.returncode == 0, done.stderr
    where, devtools, local_s3 = json.loads(done.stdout)
    assert Path(where).is_relative_to(venv.root), where  # the wheel's, not the checkout's
    assert (devtools, local_s3) == (False, False)


def test_the_installed_serve_answers_a_real_request(venv, d0_model_dir, photos, tmp_path):
    port = free_port()
    server = ServerProcess([venv.bin / "serve", "--model-dir", d0_model_dir, "--port", str(port)],
                           f"http://127.0.0.1:{port}", name="serve (wheel)",
                           env={**os.environ, "SMVISION_BIND_HOST": "127.0.0.1", "PYTHONNOUSERSITE": "1"},
                           cwd=venv.root, log_path=tmp_path / "serve.log", ready_timeout_s=180)
    with server:
        answer = requests.post(server.url + "/invocations", data=f"{BUCKET}/coffee.png",
                               headers={"Content-Type": "text/csv"}, timeout=120)
    assert server.process.returncode == 0, server.log_tail()
    assert answer.status_code == 200, answer.text
    (result,) = answer.json()
    assert result["source"] == f"s3://{BUCKET}/coffee.png" and "detections" in result


def test_the_installed_cli_deploys_against_moto(venv, tmp_path):
    with moto_sagemaker.running(tmp_path / "moto.log"):
        # our cpu image in ECR, as `smvision image push cpu` leaves it: what deploy create deploys
        ecr = boto3.client("ecr")
        ecr.create_repository(repositoryName="smvision")
        manifest = {"schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                    "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "size": 1,
                               "digest": "sha256:" + "c" * 64}, "layers": []}
        tag = f"cpu-{importlib.metadata.version('smvision')}-0123456789ab"
        ecr.put_image(repositoryName="smvision", imageTag=tag, imageManifest=json.dumps(manifest))
        created = venv.run(venv.bin / "smvision", "deploy", "create", "--name", "wheel-d0", "--role", ROLE,
                           "--model-data", DATA, "--instance-type", "ml.c5.xlarge", "--poll", "0.05")
        assert created.returncode == 0, created.stderr
        assert created.stdout.startswith("wheel-d0 InService wheel-d0-"), created.stdout
        listed = venv.run(venv.bin / "smvision", "deploy", "list")
        assert listed.returncode == 0, listed.stderr
        assert "wheel-d0" in listed.stdout
        endpoint = boto3.client("sagemaker").describe_endpoint(EndpointName="wheel-d0")
        assert endpoint["EndpointStatus"] == "InService"
        assert f"image 123456789012.dkr.ecr.us-east-1.amazonaws.com/smvision:{tag}" in created.stderr
