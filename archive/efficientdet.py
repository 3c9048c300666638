"""Build an EfficientDet archive from zylo117 weights (or random weights, for demos)."""

from __future__ import annotations

import json
import logging
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
