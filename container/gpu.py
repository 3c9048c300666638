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
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

# the driver and the compat decision; re-exported: this module is the GPU start-up's one name
from smvision.container.cuda_driver import (  # noqa: F401
    DEFAULT_COMPAT_DIR,
    DEVICE_NODE,
    ENV_COMPAT,
    ENV_COMPAT_DIR,
    ENV_CPU_FALLBACK,
    ENV_REEXECUTED,
    NVIDIA_SMI_QUERY,
    PROC_DRIVER_VERSION,
    CompatDecision,
    GpuSettings,
    HostDriver,
    Version,
    compat_applied,
    compat_driver_version,
    counted,
    decide,
    format_version,
    library_path_with,
    parse_nvidia_smi,
    parse_proc_driver_version,
    parse_version,
    read_host_driver,
)

log = logging.getLogger("smvision.container")

#: seconds the CUDA probe (import torch, initialise CUDA on every device) may take
PROBE_TIMEOUT_S = 300.0


class GpuStartupError(ValueError):
    """A GPU is visible but CUDA cannot serve on it; the message says what was found and
    what to do."""


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
