"""The one detect() both EfficientDet runtimes share: check thresholds, preprocess, forward, postprocess.

EfficientDetector (torch) and OnnxEfficientDetector (ONNX Runtime) fill in the three
steps; the thresholds, the Server-Timing stages and the warm-up live here once.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

import numpy as np

from smvision.inflight import stage

from .config import EfficientDetConfig
from .detections import Detections
from .resize import Resized
from .thresholds import check_thresholds


class Detector(ABC):
    """Images in, detections out, one batched forward pass per call; thread-safe."""

    config: EfficientDetConfig
    #: "torch" or "onnx": which runtime fills in the steps
    runtime: str

    @abstractmethod
    def preprocess(self, images: Sequence[np.ndarray]) -> tuple[Any, list[Resized]]:
        """HxWx3 uint8 RGB images -> the runtime's (B, 3, S, S) batch and how each image was resized."""

    @abstractmethod
    def forward(self, batch: Any) -> tuple[Any, Any]:
        """The network alone: batch -> regression (B, A, 4), classification (B, A, C)."""

    @abstractmethod
    def postprocess(
        self,
        outputs: tuple[Any, Any],
        pred_thresholds: list[float],
        iou_thresholds: list[float],
        fits: list[Resized],
        max_detections: Sequence[int | None] | None,
    ) -> list[Detections]:
        """The network's outputs -> detections per image (decoding, thresholds, NMS)."""

    def detect(
        self,
        images: Sequence[np.ndarray],
        pred_thresholds: Sequence[float],
        iou_thresholds: Sequence[float],
        max_detections: Sequence[int | None] | None = None,
    ) -> list[Detections]:
        """Detections per image (HxWx3 uint8 RGB, any sizes), with per-image thresholds
        and, if given, at most max_detections[i] per image (the best-scoring ones)."""
        preds = check_thresholds(pred_thresholds, "pred_thresholds", len(images))
        ious = check_thresholds(iou_thresholds, "iou_thresholds", len(images))
        if len(images) == 0:
            return []
        with stage("preprocess"):
            batch, fits = self.preprocess(images)
        with stage("forward"):
            outputs = self.forward(batch)
        with stage("nms"):
            return self.postprocess(outputs, preds, ious, fits, max_detections)

    def warm_up(self) -> None:
        """One forward pass on a dummy image, so the first request is not the slow one."""
        size = self.config.input_size
        self.detect([np.zeros((size, size, 3), np.uint8)], [1.0], [0.5])
