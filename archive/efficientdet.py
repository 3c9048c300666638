"""Build an EfficientDet archive from zylo117 weights (or random weights, for demos)."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from smvision.archive.build import build_archive
from smvision.archive.coco import COCO_CLASSES
from smvision.artifacts import ONNX, WEIGHTS

log = logging.getLogger("smvision")

WEIGHTS_FILE = "model.pth"
ONNX_FILE = "model.onnx"
CLASSES_FILE = "classes.json"
#: what an archive carries: torch weights, the ONNX export, or both (one archive for CPU and GPU endpoints)
BACKENDS = ("torch", "onnx", "both")
DEFAULT_BACKEND = "both"


def read_classes(path: str | Path | None) -> list[str]:
    """Class names from a JSON list or a text file (one per line); COCO's 90 by default."""
    if path is None:
        return list(COCO_CLASSES)
    text = Path(path).read_text()
    if Path(path).suffix == ".json":
        names = json.loads(text)
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ValueError(f"{path} must hold a JSON list of class names")
    else:
        names = [line.strip() for line in text.splitlines()]
        while names and not names[-1]:
            names.pop()
    if not names:
        raise ValueError(f"{path} names no classes")
    return names


def random_state_dict(shapes: Mapping[str, tuple[int, ...]], seed: int = 1) -> dict:
    """Random weights (key -> tensor of that shape) whose statistics spread like a trained
    network's: convs scaled by fan-in, BatchNorm statistics away from identity, some
    negative BiFPN fusion weights. For tests and benchmarks that compare numerics (torch vs
    ONNX, fp32 vs bf16): default initialisation's identity BatchNorm would hide differences.
    Values depend on the order of `shapes` (one generator, drawn key by key)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    out = {}
    for key, shape in shapes.items():
        if key.endswith("num_batches_tracked"):
            out[key] = torch.tensor(7)
        elif key.endswith("running_var"):
            out[key] = 0.5 + torch.rand(shape, generator=g)
        elif key.endswith("running_mean") or (key.endswith(".bias") and len(shape) == 1):
            out[key] = 0.1 * torch.randn(shape, generator=g)
        elif len(shape) == 1 and "_w" in key.rsplit(".", 1)[-1]:
            out[key] = torch.rand(shape, generator=g) * 1.2 - 0.2  # some negative: ReLU matters
        elif len(shape) == 1:
            out[key] = 0.5 + torch.rand(shape, generator=g)  # BN weight
        else:
            fan_in = shape[1] * shape[2] * shape[3]
            out[key] = torch.randn(shape, generator=g) / math.sqrt(fan_in)
    return out


def trained_like_efficientdet(coef: int, images: Sequence, num_classes: int = 90, seed: int = 0):
    """EfficientDet D{coef} whose numerics behave like a trained network's, in eval mode:
    BatchNorm affine parameters drawn at random, every spatial kernel blended 70% toward a
    Gaussian low-pass of its own sum (so the network is not hypersensitive to pixel noise),
    and BatchNorm running statistics calibrated on `images` (HxWx3 uint8 photos: two
    cumulative passes, so every layer's statistics match what it sees in eval mode).
    For tests and benchmarks of numerics (torch vs ONNX Runtime): default initialisation
    scores every anchor near the 0.01 prior and hides drift that these weights show."""
    import torch
    from torch import nn

    from smvision.models.efficientdet import EfficientDet, efficientdet_config
    from smvision.models.efficientdet.resize import preprocess_numpy

    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = EfficientDet(efficientdet_config(coef, num_classes=num_classes))
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Conv2d) and module.kernel_size[0] > 1:
                k = module.kernel_size[0]
                ax = torch.arange(k, dtype=torch.float32) - (k - 1) / 2
                gauss = torch.exp(-(ax[:, None] ** 2 + ax[None, :] ** 2) / (2 * (k / 3) ** 2))
                total = module.weight.sum(dim=(2, 3), keepdim=True)
                module.weight.mul_(0.3).add_(0.7 * total * gauss / gauss.sum())
        for norm in norms:
            norm.weight.copy_(0.5 + torch.rand(norm.weight.shape, generator=generator))
            norm.bias.copy_(0.2 * torch.randn(norm.bias.shape, generator=generator))
        batch, _ = preprocess_numpy(list(images), model.config.input_size, model.config.mean, model.config.std)
        for _ in range(2):
            model.eval()
            for norm in norms:
                norm.reset_running_stats()
                norm.momentum = None  # a cumulative average over the calibration batch
                norm.train()
            model(torch.from_numpy(batch))
    for norm in norms:
        norm.momentum = 0.01
    return model.eval()


def build_efficientdet_archive(
    output: str | Path,
    compound_coef: int,
    weights: str | Path | None = None,
    classes: str | Path | None = None,
    seed: int = 0,
    backend: str = DEFAULT_BACKEND,
) -> Path:
    """Write an EfficientDet D{compound_coef} model.tar.gz.

    weights: a zylo117 checkpoint (state_dict); checked strictly against the
    architecture before anything is written. None: random weights, said loudly.
    backend: "torch" (model.pth), "onnx" (model.onnx, BatchNorm folded) or "both".
    The manifest's artifacts name them: `weights` = model.pth, `onnx` = model.onnx.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    import torch

    from smvision.models.efficientdet import EfficientDet, efficientdet_config, load_zylo117_state_dict

    names = read_classes(classes)
    config = efficientdet_config(compound_coef, num_classes=len(names))
    if weights is None:
        torch.manual_seed(seed)
        model = EfficientDet(config)
        log.warning(
            "!!! No --weights given: D%d archive with RANDOMLY INITIALISED weights (seed %d). "
            "Its detections are noise: for demos and tests only. !!!",
            compound_coef,
            seed,
        )
    else:
        model = EfficientDet(config)
        state_dict = torch.load(weights, map_location="cpu", weights_only=True)
        load_zylo117_state_dict(model, state_dict)

    with_torch, with_onnx = backend in ("torch", "both"), backend in ("onnx", "both")
    onnx_bytes = None
    if with_onnx:
        from smvision.archive.efficientdet_onnx import export_efficientdet_onnx

        onnx_bytes = export_efficientdet_onnx(model)

    def write_payload(stage: Path) -> dict[str, str]:
        (stage / CLASSES_FILE).write_text(json.dumps(names, indent=1) + "\n")
        artifacts = {}
        if onnx_bytes is not None:
            (stage / ONNX_FILE).write_bytes(onnx_bytes)
            artifacts[ONNX] = ONNX_FILE
        if with_torch:
            torch.save(model.state_dict(), stage / WEIGHTS_FILE)
            artifacts[WEIGHTS] = WEIGHTS_FILE
        return artifacts

    return build_archive(
        output,
        kind="efficientdet",
        config=config.to_dict(),
        write_payload=write_payload,
        random_weights=weights is None,
        extra={"source_weights": Path(weights).name if weights else None},
    )
