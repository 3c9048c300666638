"""EfficientDetector: images in, detections out, one batched forward pass per call."""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from smvision.inflight import stage

from .anchors import generate_anchors
from .checkpoint import load_zylo117_state_dict
from .config import EfficientDetConfig
from .model import EfficientDet
from .postprocess import AnchorGeometry, Detections, postprocess
from .preprocess import preprocess
from .thresholds import check_thresholds as _check_thresholds

log = logging.getLogger("smvision")


class EfficientDetector:
    """A ready-to-serve EfficientDet: BN folded, eval mode, channels_last, inference_mode, thread-safe.

    `model` is the inference copy (BatchNorm folded into the convs): it is not a
    checkpoint; save EfficientDet(config) with the original weights instead.
    """

    runtime = "torch"

    def __init__(
        self,
        config: EfficientDetConfig,
        state_dict: Mapping[str, Tensor] | None = None,
        *,
        device: str = "cpu",
        float16: bool = False,
    ) -> None:
        self.config = config
        self.device = torch.device(device)
        if state_dict is None:
            model = EfficientDet(config)
        else:
            # Built on the meta device (no random init, no memory) and given the checkpoint's
            # own tensors (assign=True): about 0.25 s less at start than init-then-copy.
            with torch.device("meta"):
                model = EfficientDet(config)
            load_zylo117_state_dict(model, state_dict, assign=True)
            model.float()  # a half-precision checkpoint is folded in float32, as before
        if float16 and self.device.type != "cuda":
            log.warning("float16 asked for on %s: running in float32 (half precision only on CUDA)", self.device)
            float16 = False
        self.dtype = torch.float16 if float16 else torch.float32
        # BN folded into the convs (in float32, before any cast): ~20% faster, same outputs to rounding.
        model.fuse_batchnorm()
        self.model = model.to(self.device, dtype=self.dtype, memory_format=torch.channels_last).eval()
        self.model.requires_grad_(False)
        self._lock = threading.Lock()
        self._anchors: dict[tuple[int, int], AnchorGeometry] = {}

    def anchors(self, input_hw: tuple[int, int]) -> AnchorGeometry:
        """Anchor geometry for a padded input size, computed once per size."""
        geometry = self._anchors.get(input_hw)
        if geometry is None:
            boxes = generate_anchors(
                input_hw,
                self.config.pyramid_levels,
                self.config.anchor_scale,
                self.config.anchor_scales,
                self.config.anchor_ratios,
                device=self.device,
            )
            geometry = self._anchors.setdefault(input_hw, AnchorGeometry.from_boxes(boxes))
        return geometry

    def detect(
        self,
        images: Sequence[np.ndarray],
        pred_thresholds: Sequence[float],
        iou_thresholds: Sequence[float],
        max_detections: Sequence[int] | None = None,
    ) -> list[Detections]:
        """Detections per image (HxWx3 uint8 RGB, any sizes), with per-image thresholds
        and, if given, at most max_detections[i] per image (the best-scoring ones)."""
        preds = _check_thresholds(pred_thresholds, "pred_thresholds", len(images))
        ious = _check_thresholds(iou_thresholds, "iou_thresholds", len(images))
        if len(images) == 0:
            return []
        size = self.config.input_size
        with torch.inference_mode():
            with stage("preprocess"):
                batch, fits = preprocess(images, size, self.config.mean, self.config.std, self.device, self.dtype)
            with stage("forward"), self._lock:
                regression, classification = self.model(batch)
            with stage("nms"):
                return postprocess(
                    regression, classification, self.anchors((size, size)), (size, size), preds, ious, fits,
                    max_detections,
                )

    def warm_up(self) -> None:
        """One forward pass on a dummy image, so the first request is not the slow one."""
        size = self.config.input_size
        self.detect([np.zeros((size, size, 3), np.uint8)], [1.0], [0.5])
