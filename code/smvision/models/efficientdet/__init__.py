"""EfficientDet D0-D8 (8 = D7x) in zylo117/Yet-Another-EfficientDet-Pytorch's key layout.

Built on the pip `efficientnet_pytorch` package; zylo117 checkpoints load strictly and
give the same detections as that repository's inference pipeline.
"""

from .anchors import generate_anchors
from .checkpoint import load_zylo117_state_dict
from .config import EfficientDetConfig, efficientdet_config
from .detector import EfficientDetector
from .model import EfficientDet
from .postprocess import Detections

__all__ = [
    "Detections",
    "EfficientDet",
    "EfficientDetConfig",
    "EfficientDetector",
    "efficientdet_config",
    "generate_anchors",
    "load_zylo117_state_dict",
]
