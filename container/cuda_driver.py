"""The NVIDIA driver a host runs and SageMaker's CUDA forward-compatibility rule.

The host driver comes from ``nvidia-smi --query-gpu=driver_version,name
--format=csv,noheader``, else /proc/driver/nvidia/version (proprietary and open kernel
modules); the image's compat package's driver from the target of
<compat dir>/libcuda.so.1 (libcuda.so.560.35.05 -> 560.35.05). decide() applies SageMaker's
documented rule ("Updating inference containers to comply with the NVIDIA Container
Toolkit"): the compat folder goes first on LD_LIBRARY_PATH only when the host driver is
older; SMVISION_CUDA_COMPAT=on / off overrides it. smvision.container.gpu acts on the
decision at start.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from smvision.container.settings import SettingsError
from smvision.settings import choice, flag

ENV_COMPAT = "SMVISION_CUDA_COMPAT"
ENV_COMPAT_DIR = "SMVISION_CUDA_COMPAT_DIR"
ENV_CPU_FALLBACK = "SMVISION_CPU_FALLBACK"
DEFAULT_COMPAT_DIR = "/usr/local/cuda/compat"
PROC_DRIVER_VERSION = "/proc/driver/nvidia/version"
DEVICE_NODE = "/dev/nvidiactl"
NVIDIA_SMI_QUERY = ("--query-gpu=driver_version,name", "--format=csv,noheader")
#: set in the re-executed process so that it never re-executes again
ENV_REEXECUTED = "SMVISION_CUDA_COMPAT_REEXECUTED"

Version = tuple[int, ...]


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
