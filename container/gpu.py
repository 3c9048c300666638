"""The GPU at start: CUDA forward compatibility, and a refusal rather than a silent CPU.

SageMaker runs a hosting container's ``serve`` on whatever NVIDIA driver the host has:
470 by default on ml.g4dn / g5 / p3 / p4d, 535 on p5 and g6, 550 on p5e / p5en, 580 with
InferenceAmiVersion al2023-ami-sagemaker-inference-gpu-4-1. A CUDA user space newer than
the driver runs only through NVIDIA's forward-compatibility libraries, which the image
carries in /usr/local/cuda/compat (the ``cuda-compat`` package of NVIDIA's base image) and
which, since NVIDIA Container Toolkit 1.17.4, the container must enable itself. SageMaker's
documented recipe ("Updating inference containers to comply with the NVIDIA Container
Toolkit") compares the host driver with the compat package's driver version and prepends
the compat folder to LD_LIBRARY_PATH only when the host driver is older. Enabling it on a
newer driver breaks CUDA (CUDA_ERROR_SYSTEM_DRIVER_MISMATCH), so the choice is made from
what the host reports, never guessed:

- the host driver: ``nvidia-smi --query-gpu=driver_version,name --format=csv,noheader``,
  else /proc/driver/nvidia/version (proprietary and open kernel modules);
- the compat package's driver: the target of <compat dir>/libcuda.so.1
  (libcuda.so.560.35.05 -> 560.35.05).

LD_LIBRARY_PATH is read by the dynamic loader when a process starts, so ``serve`` applies
the decision by re-executing itself (os.execve, same PID, same arguments) with the variable
set, before anything has loaded libcuda. It then runs a short probe in a subprocess (torch
imported, CUDA initialised, devices named; the server process itself imports nothing) and
refuses to start when a GPU is visible but CUDA cannot initialise, unless
SMVISION_CPU_FALLBACK allows serving on the CPU.

Settings: SMVISION_CUDA_COMPAT (auto | on | off; default auto, the rule above),
SMVISION_CUDA_COMPAT_DIR (default /usr/local/cuda/compat), SMVISION_CPU_FALLBACK (false).
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from smvision.container.settings import SettingsError
from smvision.settings import choice, flag

log = logging.getLogger("smvision.container")

ENV_COMPAT = "SMVISION_CUDA_COMPAT"
ENV_COMPAT_DIR = "SMVISION_CUDA_COMPAT_DIR"
ENV_CPU_FALLBACK = "SMVISION_CPU_FALLBACK"
DEFAULT_COMPAT_DIR = "/usr/local/cuda/compat"
PROC_DRIVER_VERSION = "/proc/driver/nvidia/version"
DEVICE_NODE = "/dev/nvidiactl"
NVIDIA_SMI_QUERY = ("--query-gpu=driver_version,name", "--format=csv,noheader")
#: set in the re-executed process so that it never re-executes again
ENV_REEXECUTED = "SMVISION_CUDA_COMPAT_REEXECUTED"
#: seconds the CUDA probe (import torch, initialise CUDA on every device) may take
PROBE_TIMEOUT_S = 300.0

Version = tuple[int, ...]


class GpuStartupError(ValueError):
    """A GPU is visible but CUDA cannot serve on it; the message says what was found and
    what to do."""


def parse_version(text: str) -> Version | None:
    """'535.183.01' -> (535, 183, 1); None for anything that is not dotted numbers."""
    text = text.strip()
    if not re.fullmatch(r"\d+(\.\d+)*", text):
        return None
    return tuple(int(part) for part in text.split("."))


def format_version(version: Version | None) -> str:
    """(535, 183, 1) -> '535.183.01' (NVIDIA writes the patch level with two digits)."""
    if version is None:
        return "unknown"
    head, *rest = version
    return ".".join([str(head), *(f"{part:02d}" for part in rest)])


def parse_nvidia_smi(output: str) -> tuple[Version | None, tuple[str, ...]]:
    """The driver version and the GPU names from
    ``nvidia-smi --query-gpu=driver_version,name --format=csv,noheader`` (one line per GPU:
    ``535.183.01, NVIDIA A10G``); (None, ()) when no line has a version."""
    version: Version | None = None
    names: list[str] = []
    for line in output.splitlines():
        driver, sep, name = line.partition(",")
        parsed = parse_version(driver)
        if not sep or parsed is None:
            continue
        version = version or parsed
        names.append(name.strip())
    return version, tuple(names)


def parse_proc_driver_version(text: str) -> Version | None:
    """The kernel module's version from /proc/driver/nvidia/version, for the proprietary
    module (``... Kernel Module  470.256.02  Thu May ...``) and the open one
    (``... Open Kernel Module for x86_64  535.183.01  Release Build ...``)."""
    match = re.search(r"Kernel Module(?:\s+for\s+\S+)?\s+(\d+(?:\.\d+)+)\s", text + " ")
    return parse_version(match.group(1)) if match else None


@dataclass(frozen=True)
class HostDriver:
    """What the host shows of its NVIDIA driver: its version (None when not found), the GPU
    names nvidia-smi listed, whether a device node is there, and where the version came
    from (or why none was found)."""

    version: Version | None
    gpus: tuple[str, ...] = ()
    device_node: bool = False
    source: str = ""

    @property
    def gpu_visible(self) -> bool:
        """A GPU is there for this process: a driver answered, or its device node exists."""
        return self.version is not None or bool(self.gpus) or self.device_node


def read_host_driver(nvidia_smi: str = "nvidia-smi", proc_path: str = PROC_DRIVER_VERSION,
                     device_node: str = DEVICE_NODE, timeout_s: float = 60.0) -> HostDriver:
    """The host driver as nvidia-smi reports it, else as /proc/driver/nvidia/version does."""
    node = os.path.exists(device_node)
    tried = []
    try:
        done = subprocess.run([nvidia_smi, *NVIDIA_SMI_QUERY], capture_output=True, text=True,
                              timeout=timeout_s, check=False)
    except FileNotFoundError:
        tried.append("nvidia-smi: not found")
    except (OSError, subprocess.TimeoutExpired) as exc:
        tried.append(f"nvidia-smi: {type(exc).__name__}")
    else:
        version, names = parse_nvidia_smi(done.stdout)
        if done.returncode == 0 and version is not None:
            return HostDriver(version, names, node, "nvidia-smi")
        said = (done.stdout + done.stderr).strip().splitlines()
        tried.append(f"nvidia-smi: exit {done.returncode}" + (f" ({said[0][:160]})" if said else ""))
    try:
        text = Path(proc_path).read_text(errors="replace")
    except OSError:
        tried.append(f"{proc_path}: absent")
    else:
        version = parse_proc_driver_version(text)
        if version is not None:
            return HostDriver(version, (), node, proc_path)
        tried.append(f"{proc_path}: no version in it")
    if node:
        tried.append(f"{device_node}: present")
    return HostDriver(None, (), node, "; ".join(tried))


def compat_driver_version(compat_dir: str) -> Version | None:
    """The driver version of the CUDA forward-compatibility package in compat_dir, from
    libcuda.so.1's target (libcuda.so.560.35.05) or the versioned file next to it; None
    when there is no package there."""
    folder = Path(compat_dir)
    link = folder / "libcuda.so.1"
    candidates = []
    if link.is_symlink():
        candidates.append(os.readlink(link))
    if folder.is_dir():
        candidates += sorted(p.name for p in folder.glob("libcuda.so.*.*"))
    for name in candidates:
        match = re.fullmatch(r"libcuda\.so\.(\d+(?:\.\d+)+)", os.path.basename(name))
        if match:
            return parse_version(match.group(1))
    return None


@dataclass(frozen=True)
class GpuSettings:
    """SMVISION_CUDA_COMPAT, SMVISION_CUDA_COMPAT_DIR and SMVISION_CPU_FALLBACK."""

    compat: str = "auto"
    compat_dir: str = DEFAULT_COMPAT_DIR
    cpu_fallback: bool = False

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> GpuSettings:
        """Read and check the three variables; SettingsError names a bad one."""
        try:
            compat = choice("auto", "on", "off")(env.get(ENV_COMPAT) or "auto", ENV_COMPAT)
            fallback = flag(env[ENV_CPU_FALLBACK], ENV_CPU_FALLBACK) if env.get(ENV_CPU_FALLBACK) else False
        except ValueError as exc:
            raise SettingsError(str(exc)) from None
        return cls(compat, env.get(ENV_COMPAT_DIR) or DEFAULT_COMPAT_DIR, fallback)


def counted(names: Sequence[str]) -> str:
    """'8 x NVIDIA H200' for eight of a kind, names in order of first appearance."""
    seen: dict[str, int] = {}
    for name in names:
        seen[name] = seen.get(name, 0) + 1
    return ", ".join(name if n == 1 else f"{n} x {name}" for name, n in seen.items())


@dataclass(frozen=True)
class CompatDecision:
    """Whether to put the compat folder first on LD_LIBRARY_PATH, and why."""

    enable: bool
    host: HostDriver
    compat_dir: str
    compat_version: Version | None
    mode: str
    reason: str

    def log_line(self) -> str:
        """One line for the start-up log."""
        driver = ("no NVIDIA driver" if self.host.version is None
                  else f"NVIDIA driver {format_version(self.host.version)}")
        source = f" ({self.host.source})" if self.host.source else ""
        gpus = f", GPUs: {counted(self.host.gpus)}" if self.host.gpus else ""
        state = "on" if self.enable else "off"
        return f"{driver}{source}{gpus}; CUDA forward compatibility {state}: {self.reason}"


def decide(host: HostDriver, compat_dir: str, compat_version: Version | None,
           mode: str = "auto") -> CompatDecision:
    """SageMaker's rule: the compat libraries only when the host driver is older than the
    compat package's driver (auto); SMVISION_CUDA_COMPAT=on / off overrides it."""
    package = (f"the image's compat package (driver {format_version(compat_version)}, {compat_dir})"
               if compat_version is not None else None)

    def made(enable: bool, reason: str) -> CompatDecision:
        return CompatDecision(enable, host, compat_dir, compat_version, mode, reason)

    if not host.gpu_visible:
        return made(False, "no NVIDIA GPU visible, serving on the CPU")
    if package is None:
        return made(False, f"no CUDA forward-compatibility package in {compat_dir}")
    if mode == "off":
        return made(False, f"{ENV_COMPAT}=off ({package} unused)")
    if mode == "on":
        return made(True, f"{ENV_COMPAT}=on: {package}")
    if host.version is None:
        return made(False, f"the driver version could not be read, so {package} is left off")
    if host.version < compat_version:
        return made(True, f"the driver is older than {package}")
    return made(False, f"the driver runs the image's CUDA natively ({package} is not newer)")


def library_path_with(env: Mapping[str, str], compat_dir: str) -> str:
    """LD_LIBRARY_PATH with compat_dir first (and nowhere else)."""
    rest = [p for p in (env.get("LD_LIBRARY_PATH") or "").split(os.pathsep) if p and p != compat_dir]
    return os.pathsep.join([compat_dir, *rest])


def compat_applied(env: Mapping[str, str], compat_dir: str) -> bool:
    """compat_dir is the first folder on LD_LIBRARY_PATH."""
    return (env.get("LD_LIBRARY_PATH") or "").split(os.pathsep)[0] == compat_dir


@dataclass(frozen=True)
class CudaProbe:
    """What torch saw in a fresh process: its build, the CUDA runtime it was built with,
    the driver API version libcuda reports, the devices, or the error that stopped it."""

    ok: bool
    torch: str = ""
    cuda_runtime: str = ""
    driver_api: str = ""
    devices: tuple[str, ...] = ()
    error: str = ""


def probe_cuda(env: Mapping[str, str] | None = None, timeout_s: float = PROBE_TIMEOUT_S) -> CudaProbe:
    """Run ``python -m smvision.container.gpu`` (import torch, initialise CUDA, name every
    device) in a subprocess with env, so that this process loads neither torch nor libcuda."""
    try:
        done = subprocess.run([sys.executable, "-m", "smvision.container.gpu"], capture_output=True,
                              text=True, timeout=timeout_s, env=dict(os.environ if env is None else env),
                              check=False)
    except subprocess.TimeoutExpired:
        return CudaProbe(False, error=f"initialising CUDA took more than {timeout_s:g} s")
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if not lines:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return CudaProbe(False, error=f"the CUDA probe exited {done.returncode}: {tail[:300]}")
    data = json.loads(lines[-1])
    return CudaProbe(bool(data.get("ok")), data.get("torch", ""), data.get("cuda_runtime", ""),
                     data.get("driver_api", ""), tuple(data.get("devices", ())), data.get("error", ""))


def _probe() -> dict[str, object]:
    """In the probe process: torch's CUDA build, CUDA initialised, the devices' names."""
    result: dict[str, object] = {"ok": False}
    try:
        import torch
    except ImportError as exc:
        result["error"] = f"torch cannot be imported ({exc})"
        return result
    result["torch"] = torch.__version__
    result["cuda_runtime"] = torch.version.cuda or ""
    if not torch.version.cuda:
        result["error"] = f"this torch ({torch.__version__}) is built without CUDA"
        return result
    try:
        torch.cuda.init()
        count = torch.cuda.device_count()
        result["devices"] = [torch.cuda.get_device_name(i) for i in range(count)]
    except Exception as exc:  # noqa: BLE001 - reported, the caller decides
        result["error"] = f"{type(exc).__name__}: {' '.join(str(exc).split())[:600]}"
        return result
    result["driver_api"] = _driver_api_version()
    if not count:
        result["error"] = "torch initialised CUDA but sees no device"
        return result
    result["ok"] = True
    return result


def _driver_api_version() -> str:
    """The CUDA version libcuda.so.1 (the one torch loaded) implements, e.g. '12.6'."""
    import ctypes

    try:
        libcuda = ctypes.CDLL("libcuda.so.1")
        version = ctypes.c_int(0)
        if libcuda.cuDriverGetVersion(ctypes.byref(version)) != 0:
            return ""
    except (OSError, AttributeError):
        return ""
    return f"{version.value // 1000}.{version.value % 1000 // 10}"


@dataclass
class Startup:
    """The GPU part of ``serve``'s start, step by step (each step testable alone)."""

    env: Mapping[str, str] = field(default_factory=lambda: os.environ)
    nvidia_smi: str = "nvidia-smi"
    proc_path: str = PROC_DRIVER_VERSION
    device_node: str = DEVICE_NODE

    def decision(self, settings: GpuSettings) -> CompatDecision:
        """The compat decision for this host and image."""
        host = read_host_driver(self.nvidia_smi, self.proc_path, self.device_node)
        return decide(host, settings.compat_dir, compat_driver_version(settings.compat_dir), settings.compat)

    def reexec_environment(self, decision: CompatDecision) -> dict[str, str] | None:
        """The environment to re-execute this process with, or None when it is right as it is
        (compat off, already applied, or this is the re-executed process)."""
        if not decision.enable or compat_applied(self.env, decision.compat_dir) or self.env.get(ENV_REEXECUTED):
            return None
        return {**self.env, "LD_LIBRARY_PATH": library_path_with(self.env, decision.compat_dir),
                ENV_REEXECUTED: "1"}


def refusal(decision: CompatDecision, probe: CudaProbe) -> str:
    """Why ``serve`` will not start: a GPU is visible and CUDA cannot use it."""
    hints = []
    if decision.enable:
        hints.append(f"{ENV_COMPAT}=off if this GPU or driver branch does not support forward "
                     "compatibility (data-centre GPUs only)")
    elif decision.host.version is not None and decision.compat_version is not None:
        hints.append(f"{ENV_COMPAT}=on to try the image's compat package")
    hints.append("a host with a newer driver: deploy with --inference-ami-version "
                 "al2023-ami-sagemaker-inference-gpu-4-1 (driver 580)")
    hints.append(f"{ENV_CPU_FALLBACK}=true to serve on the CPU instead")
    build = f" (torch {probe.torch}, CUDA {probe.cuda_runtime or 'none'})" if probe.torch else ""
    return (f"a GPU is visible but CUDA cannot initialise{build}: {probe.error}. "
            f"Start-up decision: {decision.log_line()}. Options: {'; '.join(hints)}")


def ready_line(decision: CompatDecision, probe: CudaProbe) -> str:
    """The start-up log line once CUDA works."""
    compat = (f"on ({decision.compat_dir}, driver {format_version(decision.compat_version)})"
              if decision.enable else "off")
    return (f"GPU ready: NVIDIA driver {format_version(decision.host.version)} ({decision.host.source}), "
            f"CUDA runtime {probe.cuda_runtime} (torch {probe.torch}), driver API {probe.driver_api or 'unknown'}, "
            f"forward compatibility {compat}, devices: {counted(probe.devices)}")


def start(argv: Sequence[str] | None = None, startup: Startup | None = None) -> CompatDecision:
    """Everything ``serve`` does about the GPU before it serves: decide compat, re-execute
    with LD_LIBRARY_PATH when needed (does not return then), probe CUDA and log the result.

    Raises GpuStartupError when a GPU is visible but CUDA cannot initialise (unless
    SMVISION_CPU_FALLBACK=true), SettingsError for an unusable GPU setting."""
    startup = startup or Startup()
    settings = GpuSettings.from_env(startup.env)
    decision = startup.decision(settings)
    log.info("GPU start-up: %s", decision.log_line())
    new_env = startup.reexec_environment(decision)
    if new_env is not None:
        args = list(sys.orig_argv if argv is None else argv)
        log.info("re-executing with LD_LIBRARY_PATH=%s", new_env["LD_LIBRARY_PATH"])
        for handler in logging.getLogger("smvision").handlers + logging.getLogger().handlers:
            handler.flush()
        os.execve(sys.executable, [sys.executable, *args[1:]], new_env)
    if not decision.host.gpu_visible:
        return decision
    probe = probe_cuda(startup.env)
    if probe.ok:
        log.info("%s", ready_line(decision, probe))
        return decision
    message = refusal(decision, probe)
    if settings.cpu_fallback:
        log.warning("%s=true: serving on the CPU. %s", ENV_CPU_FALLBACK, message)
        return decision
    raise GpuStartupError(message)


if __name__ == "__main__":
    print(json.dumps(_probe()))
