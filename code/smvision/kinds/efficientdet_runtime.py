"""The EfficientDet kind's runtime: which one serves an archive here, at what batch size,
and loading its detector (smvision.models.efficientdet holds the detectors themselves).

SMVISION_RUNTIME (smvision.settings, read once at load):
  auto   (default) torch on a GPU, ONNX Runtime on CPU (0.5-0.75x torch's forward time on
         CPU, and a start without importing torch), whichever the archive carries
  onnx   ONNX Runtime; the archive must carry model.onnx (built with --backend onnx|both)
  torch  torch; the archive must carry model.pth (built with --backend torch|both)
SMVISION_BATCH_SIZE overrides the images per forward pass, which otherwise follows the
device: on CPU larger batches are slower per image (measured: benchmarks/efficientdet_runtimes.py),
on a GPU they pay.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Any

from smvision.artifacts import ONNX, WEIGHTS
from smvision.manifest import ArchiveError, Manifest
from smvision.models.efficientdet.config import EfficientDetConfig
from smvision.settings import RuntimeSettings

log = logging.getLogger("smvision")

RUNTIME_ENV = "SMVISION_RUNTIME"
#: images per forward pass when SMVISION_BATCH_SIZE is unset: fastest per image on each device
CPU_BATCH_SIZE = 1
GPU_BATCH_SIZE = 8


def gpu_present() -> bool:
    """An NVIDIA GPU is visible (its driver, or in a container its device node), checked
    without importing torch."""
    return Path("/proc/driver/nvidia/version").exists() or Path("/dev/nvidiactl").exists()


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def choose_runtime(manifest: Manifest, model_dir: Path, settings: RuntimeSettings) -> str:
    """'onnx' or 'torch' for this archive and machine, or ArchiveError saying why neither can serve."""
    wanted = settings.runtime
    has_onnx, has_torch = ONNX in manifest.artifacts, bool(manifest.weights)
    if wanted == "onnx" and not has_onnx:
        raise ArchiveError(
            f"{RUNTIME_ENV}=onnx but the archive at {model_dir} has no ONNX export: rebuild it with "
            "`smvision archive build efficientdet ... --backend onnx` (or both), or unset the variable"
        )
    if wanted == "torch" and not has_torch:
        raise ArchiveError(
            f"{RUNTIME_ENV}=torch but the archive at {model_dir} has no torch weights (model.pth): rebuild it "
            "with `smvision archive build efficientdet ... --backend torch` (or both), or unset the variable"
        )
    if not has_onnx and not has_torch:
        raise ArchiveError(f"the manifest at {model_dir} names neither torch weights nor an ONNX export")
    torch_ok, onnx_ok = has_torch and _installed("torch"), has_onnx and _installed("onnxruntime")
    if wanted == "auto":
        if torch_ok and (gpu_present() or not onnx_ok):
            return "torch"
        if onnx_ok:
            return "onnx"
        carried = " and ".join(name for name, has in (("torch weights", has_torch), ("an ONNX export", has_onnx)) if has)
        raise ArchiveError(
            f"the archive at {model_dir} carries {carried}, but the package to run it (torch or onnxruntime) "
            "is not installed here"
        )
    if not (onnx_ok if wanted == "onnx" else torch_ok):
        module = "onnxruntime" if wanted == "onnx" else "torch"
        raise ArchiveError(f"{RUNTIME_ENV}={wanted}, but {module} is not installed here")
    return wanted


def load_detector(model_dir: Path, manifest: Manifest, config: EfficientDetConfig, settings: RuntimeSettings) -> Any:
    """The archive's detector on the chosen runtime (OnnxEfficientDetector or EfficientDetector)."""
    runtime = choose_runtime(manifest, model_dir, settings)
    if runtime == "onnx":
        from smvision.models.efficientdet.onnx_detector import OnnxEfficientDetector

        device = "cuda" if gpu_present() else "cpu"
        if settings.use_float16:
            log.warning("USE_FLOAT16 is for the torch runtime on a GPU: ONNX Runtime runs in float32")
        threads = settings.compute_threads()[0]
        return OnnxEfficientDetector(config, manifest.artifact(model_dir, ONNX), device=device, threads=threads)

    import torch

    from smvision.models.efficientdet.detector import EfficientDetector

    # mmap: the weights are paged in as the model takes them (assign=True), not read and copied.
    state_dict = torch.load(manifest.artifact(model_dir, WEIGHTS), map_location="cpu", weights_only=True, mmap=True)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return EfficientDetector(config, state_dict, device=device, float16=settings.use_float16)


def detector_device(detector: Any) -> str:
    """'cuda' or 'cpu': where the detector's forward pass runs."""
    device = getattr(detector, "device", "cpu")
    if getattr(detector, "runtime", "") == "onnx":
        providers = detector.session.get_providers()
        return "cuda" if providers and providers[0] == "CUDAExecutionProvider" else "cpu"
    return str(getattr(device, "type", device))


def batch_size(detector: Any, settings: RuntimeSettings) -> int:
    """SMVISION_BATCH_SIZE if set, else the device's default (CPU 1, GPU 8)."""
    if settings.batch_size is not None:
        return settings.batch_size
    return GPU_BATCH_SIZE if detector_device(detector) == "cuda" else CPU_BATCH_SIZE
