"""EfficientDet D0-D8 (8 = D7x) in zylo117/Yet-Another-EfficientDet-Pytorch's key layout.

Built on the pip `efficientnet_pytorch` package; zylo117 checkpoints load strictly and
give the same detections as that repository's inference pipeline. Two runtimes:
EfficientDetector (torch) and OnnxEfficientDetector (ONNX Runtime, no torch import).
Names are imported on first use, so `import smvision.models.efficientdet.onnx_detector`
does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "Detections": ".detections",
    "EfficientDet": ".model",
    "EfficientDetConfig": ".config",
    "EfficientDetector": ".detector",
    "OnnxEfficientDetector": ".onnx_detector",
    "efficientdet_config": ".config",
    "generate_anchors": ".anchors",
    "load_zylo117_state_dict": ".checkpoint",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_WHERE[name], __name__), name)
    globals()[name] = value
    return value
