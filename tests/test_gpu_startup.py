"""`serve`'s GPU start-up on every SageMaker driver line, from recorded driver outputs.

No GPU here: the host driver is what a stub `nvidia-smi` on PATH prints (the recorded
outputs in fixtures/nvidia/, one per driver line: 470, 535, 550, 580, none) or a recorded
/proc/driver/nvidia/version; the image's CUDA compat package is a folder whose
libcuda.so.1 points at libcuda.so.<driver>, as in NVIDIA's base image. The decision and its
log line are checked for each line, then `serve` itself: it re-executes with
LD_LIBRARY_PATH when compat is on (same PID), refuses to start (exit 3) when a GPU is
visible and CUDA cannot initialise (torch here finds no driver, as a broken CUDA would),
serves on the CPU only when SMVISION_CPU_FALLBACK says so, and says so when there is no GPU.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from smvision.container import gpu
from smvision.deploy.server_process import ServerProcess, free_port

FIXTURES = Path(__file__).parent / "fixtures"
NVIDIA = FIXTURES / "nvidia"
#: cuda-compat-12-6's driver in nvidia/cuda:12.6.3-base (Dockerfile.gpu's base)
IMAGE_COMPAT = "560.35.05"


def stub_nvidia_smi(folder: Path, output: str, exit_code: int = 0) -> Path:
    """folder/nvidia-smi printing the recorded output `output` (a fixture name) and exiting
    with exit_code, as the driver's tool does; returns its path."""
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / "nvidia-smi"
    script.write_text(f"#!/bin/sh\ncat '{NVIDIA / output}'\nexit {exit_code}\n")
    script.chmod(0o755)
    return script


def compat_package(folder: Path, driver: str = IMAGE_COMPAT) -> str:
    """A compat folder as cuda-compat installs it: libcuda.so.1 -> libcuda.so.<driver>."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "libcuda.so.1").symlink_to(f"libcuda.so.{driver}")
    return str(folder)


def host(tmp_path: Path, output: str | None, exit_code: int = 0, proc: str | None = None,
         device_node: bool = False) -> gpu.HostDriver:
    """read_host_driver with a recorded nvidia-smi output (None: no nvidia-smi) and a
    recorded /proc/driver/nvidia/version (None: absent)."""
    smi = stub_nvidia_smi(tmp_path / "bin", output, exit_code) if output else tmp_path / "no-nvidia-smi"
    node = tmp_path / "nvidiactl"
    if device_node:
        node.touch()
    return gpu.read_host_driver(str(smi), str(NVIDIA / proc) if proc else str(tmp_path / "no-proc"), str(node))


# --- the decision, per driver line -----------------------------------------------------------

LINES = [
    # recorded nvidia-smi output, driver, GPUs, compat on with the image's CUDA 12.6
    ("smi-470-g4dn.txt", "470.256.02", "Tesla T4", True),
    ("smi-470-p4d.txt", "470.256.02", "8 x NVIDIA A100-SXM4-40GB", True),
    ("smi-535-g6.txt", "535.183.01", "NVIDIA L4", True),
    ("smi-535-p5.txt", "535.183.01", "8 x NVIDIA H100 80GB HBM3", True),
    ("smi-550-p5e.txt", "550.163.01", "8 x NVIDIA H200", True),
    ("smi-580-g5.txt", "580.126.09", "NVIDIA A10G", False),
]


@pytest.mark.parametrize("output, driver, gpus, enabled", LINES, ids=[line[0][4:-4] for line in LINES])
def test_decision_and_log_line_for_each_driver_line(tmp_path, output, driver, gpus, enabled):
    compat = compat_package(tmp_path / "compat")
    decision = gpu.decide(host(tmp_path, output), compat, gpu.compat_driver_version(compat))
    assert decision.enable is enabled
    package = f"the image's compat package (driver {IMAGE_COMPAT}, {compat})"
    reason = (f"on: the driver is older than {package}" if enabled
              else f"off: the driver runs the image's CUDA natively ({package} is not newer)")
    assert decision.log_line() == (
        f"NVIDIA driver {driver} (nvidia-smi), GPUs: {gpus}; CUDA forward compatibility {reason}")


def test_no_driver_no_gpu_means_cpu_and_no_compat(tmp_path):
    compat = compat_package(tmp_path / "compat")
    decision = gpu.decide(host(tmp_path, None), compat, gpu.compat_driver_version(compat))
    assert not decision.enable and not decision.host.gpu_visible
    assert decision.log_line() == (
        f"no NVIDIA driver (nvidia-smi: not found; {tmp_path / 'no-proc'}: absent); "
        "CUDA forward compatibility off: no NVIDIA GPU visible, serving on the CPU")


def test_nvidia_smi_without_a_driver_is_no_gpu(tmp_path):
    decision = gpu.decide(host(tmp_path, "smi-none.txt", exit_code=9), compat_package(tmp_path / "c"),
                          gpu.parse_version(IMAGE_COMPAT))
    assert not decision.enable and not decision.host.gpu_visible
    assert decision.log_line().startswith(
        "no NVIDIA driver (nvidia-smi: exit 9 (NVIDIA-SMI has failed because it couldn't communicate "
        "with the NVIDIA driver.")


@pytest.mark.parametrize("output, exit_code, proc, driver, enabled", [
    (None, 0, "proc-470.txt", "470.256.02", True),  # no nvidia-smi in the container
    ("smi-mismatch.txt", 18, "proc-535-open.txt", "535.183.01", True),  # NVML mismatch; open module
])
def test_driver_version_file_when_nvidia_smi_cannot_tell(tmp_path, output, exit_code, proc, driver, enabled):
    compat = compat_package(tmp_path / "compat")
    decision = gpu.decide(host(tmp_path, output, exit_code, proc), compat, gpu.compat_driver_version(compat))
    assert decision.enable is enabled
    assert decision.log_line().startswith(f"NVIDIA driver {driver} ({NVIDIA / proc}); CUDA forward compatibility on")


def test_a_device_node_without_a_readable_version_leaves_compat_off(tmp_path):
    decision = gpu.decide(host(tmp_path, None, device_node=True), compat_package(tmp_path / "c"),
                          gpu.parse_version(IMAGE_COMPAT))
    assert decision.host.gpu_visible and not decision.enable
    assert "the driver version could not be read" in decision.log_line()


def test_settings_override_the_rule_and_a_missing_package_turns_it_off(tmp_path):
    compat = compat_package(tmp_path / "compat")
    version = gpu.compat_driver_version(compat)
    old, new = host(tmp_path / "a", "smi-470-g4dn.txt"), host(tmp_path / "b", "smi-580-g5.txt")
    assert not gpu.decide(old, compat, version, "off").enable
    assert "SMVISION_CUDA_COMPAT=off" in gpu.decide(old, compat, version, "off").log_line()
    assert gpu.decide(new, compat, version, "on").enable
    empty = tmp_path / "empty"
    empty.mkdir()
    decision = gpu.decide(old, str(empty), gpu.compat_driver_version(str(empty)))
    assert not decision.enable and f"no CUDA forward-compatibility package in {empty}" in decision.log_line()


def test_compat_version_comes_from_the_package_files(tmp_path):
    assert gpu.compat_driver_version(compat_package(tmp_path / "a", "580.95.05")) == (580, 95, 5)
    plain = tmp_path / "b"
    plain.mkdir()
    (plain / "libcuda.so.560.35.05").touch()  # copied without the link
    assert gpu.compat_driver_version(str(plain)) == (560, 35, 5)
    assert gpu.compat_driver_version(str(tmp_path / "none")) is None


def test_reexec_environment_puts_compat_first_once(tmp_path):
    compat = compat_package(tmp_path / "compat")
    decision = gpu.decide(host(tmp_path, "smi-470-g4dn.txt"), compat, gpu.compat_driver_version(compat))
    base = {"LD_LIBRARY_PATH": "/usr/local/nvidia/lib:/usr/local/nvidia/lib64", "PATH": "/usr/bin"}
    env = gpu.Startup(env=base).reexec_environment(decision)
    assert env["LD_LIBRARY_PATH"] == f"{compat}:/usr/local/nvidia/lib:/usr/local/nvidia/lib64"
    assert gpu.Startup(env=env).reexec_environment(decision) is None  # the re-executed process
    off = gpu.decide(host(tmp_path / "x", "smi-580-g5.txt"), compat, gpu.compat_driver_version(compat))
    assert gpu.Startup(env=base).reexec_environment(off) is None


def test_bad_gpu_settings_name_the_variable():
    with pytest.raises(ValueError, match="SMVISION_CUDA_COMPAT='maybe'"):
        gpu.GpuSettings.from_env({"SMVISION_CUDA_COMPAT": "maybe"})
    with pytest.raises(ValueError, match="SMVISION_CPU_FALLBACK='sometimes'"):
        gpu.GpuSettings.from_env({"SMVISION_CPU_FALLBACK": "sometimes"})


# --- serve itself --------------------------------------------------------------------------


@pytest.fixture
def model_dir(tmp_path) -> Path:
    model = tmp_path / "model"
    (model / "code").mkdir(parents=True)
    shutil.copy(FIXTURES / "server_entries" / "echo.py", model / "code" / "inference.py")
    (model / "weights.txt").write_text("w\n")
    return model


def serve_env(tmp_path: Path, output: str | None, **extra: str) -> dict[str, str]:
    """The environment of a `serve` on a host whose nvidia-smi prints `output` (None: no
    nvidia-smi at all), in an image whose compat package is the CUDA 12.6 one."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SMVISION_CUDA", "SMVISION_CPU", "LD_LIBRARY"))}
    if output:
        env["PATH"] = f"{stub_nvidia_smi(tmp_path / 'bin', output).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(SMVISION_CUDA_COMPAT_DIR=compat_package(tmp_path / "compat"), SMVISION_BIND_HOST="127.0.0.1",
               LD_LIBRARY_PATH="/usr/local/nvidia/lib:/usr/local/nvidia/lib64", **extra)
    return env


SERVE_MODULE = [sys.executable, "-m", "smvision.container.serve"]
#: the console script as SageMaker starts it: `docker run IMAGE serve`
SERVE_SCRIPT = [str(Path(sys.executable).parent / "serve"), "serve"]


def run_serve(model_dir: Path, env: dict[str, str], command: list[str] = SERVE_MODULE) -> subprocess.CompletedProcess:
    return subprocess.run([*command, "--model-dir", str(model_dir), "--port", str(free_port())],
                          env=env, capture_output=True, text=True, timeout=300)


def pids(log: str, text: str) -> list[str]:
    """The process ids of the log lines holding text."""
    return [m.group(1) for m in re.finditer(r"\[(\d+)\] [A-Z]+ smvision\.container: (.*)", log) if text in m.group(2)]


@pytest.mark.parametrize("command", [SERVE_SCRIPT, SERVE_MODULE], ids=["serve-script", "python-m"])
def test_serve_on_an_old_driver_enables_compat_then_refuses_a_cuda_that_cannot_start(tmp_path, model_dir, command):
    env = serve_env(tmp_path, "smi-470-g4dn.txt")
    done = run_serve(model_dir, env, command)
    compat = env["SMVISION_CUDA_COMPAT_DIR"]
    assert done.returncode == 3, done.stderr
    decided = ("GPU start-up: NVIDIA driver 470.256.02 (nvidia-smi), GPUs: Tesla T4; CUDA forward compatibility on: "
               f"the driver is older than the image's compat package (driver {IMAGE_COMPAT}, {compat})")
    # decided, re-executed once with LD_LIBRARY_PATH (same PID, as SageMaker's signals need), decided again
    assert len(pids(done.stderr, decided)) == 2 and len(set(pids(done.stderr, decided))) == 1, done.stderr
    reexec = pids(done.stderr, f"re-executing with LD_LIBRARY_PATH={compat}:/usr/local/nvidia/lib:")
    assert reexec == pids(done.stderr, decided)[:1], done.stderr
    error = done.stderr.strip().splitlines()[-1]
    assert error.startswith("serve: error: a GPU is visible but CUDA cannot initialise (torch "), error
    assert "RuntimeError: Found no NVIDIA driver on your system" in error
    assert "SMVISION_CUDA_COMPAT=off if this GPU or driver branch does not support forward compatibility" in error
    assert "SMVISION_CPU_FALLBACK=true to serve on the CPU instead" in error


def test_serve_on_a_new_driver_leaves_compat_off_and_refuses_a_cuda_that_cannot_start(tmp_path, model_dir):
    done = run_serve(model_dir, serve_env(tmp_path, "smi-580-g5.txt"))
    assert done.returncode == 3, done.stderr
    assert ("GPU start-up: NVIDIA driver 580.126.09 (nvidia-smi), GPUs: NVIDIA A10G; CUDA forward compatibility "
            "off: the driver runs the image's CUDA natively") in done.stderr
    assert "re-executing" not in done.stderr
    assert "serve: error: a GPU is visible but CUDA cannot initialise" in done.stderr


def test_bad_gpu_setting_stops_serve_as_any_bad_setting(tmp_path, model_dir):
    done = run_serve(model_dir, serve_env(tmp_path, None, SMVISION_CUDA_COMPAT="yes"))
    assert done.returncode == 2
    assert "serve: error: SMVISION_CUDA_COMPAT='yes': use one of auto, on, off" in done.stderr


@pytest.mark.parametrize("output, fallback, line", [
    (None, {}, "GPU start-up: no NVIDIA driver (nvidia-smi: not found; /proc/driver/nvidia/version: absent); "
               "CUDA forward compatibility off: no NVIDIA GPU visible, serving on the CPU"),
    ("smi-550-p5e.txt", {"SMVISION_CPU_FALLBACK": "true"},
     "SMVISION_CPU_FALLBACK=true: serving on the CPU. a GPU is visible but CUDA cannot initialise"),
], ids=["no-gpu", "cpu-fallback"])
def test_serve_on_the_cpu_says_so(tmp_path, model_dir, output, fallback, line):
    if output is None and (shutil.which("nvidia-smi") or Path(gpu.PROC_DRIVER_VERSION).exists()):
        pytest.skip("this machine has an NVIDIA driver")
    port = free_port()
    server = ServerProcess([sys.executable, "-m", "smvision.container.serve", "--model-dir", str(model_dir),
                            "--port", str(port)], f"http://127.0.0.1:{port}", name="serve",
                           env=serve_env(tmp_path, output, **fallback), log_path=tmp_path / "serve.log",
                           ready_timeout_s=120)
    with server:
        server.wait_ready()
        assert line in (tmp_path / "serve.log").read_text()
    assert server.process.returncode == 0
