"""OnnxEfficientDetector: the exported network in ONNX Runtime, with numpy pre/postprocessing.

Same interface and the same detections as EfficientDetector (the torch path): the same
OpenCV-exact resize, the same anchors, the same float32 decoding and an NMS deciding as
torchvision's batched_nms. Nothing here imports torch, so a CPU endpoint on this path
starts in about a second.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from smvision.runtimes.onnx import create_session

from .anchors import anchor_boxes
from .base import Detector
from .config import EfficientDetConfig
from .detections import Detections
from .postprocess_numpy import AnchorArrays, postprocess_numpy
from .resize import Resized, preprocess_numpy

log = logging.getLogger("smvision")

#: the exported graph's input and output names (archive/efficientdet_onnx.py writes them)
INPUT_NAME = "images"
OUTPUT_NAMES = ("regression", "classification")


class OnnxEfficientDetector(Detector):
    """A ready-to-serve EfficientDet on ONNX Runtime; thread-safe (sessions allow concurrent runs)."""

    runtime = "onnx"

    def __init__(
        self, config: EfficientDetConfig, model: str | Path | bytes, *, device: str = "cpu", threads: int | None = None
    ) -> None:
        self.config = config
        self.device = device
        self.session = create_session(model, device=device, threads=threads)
        inputs = [i.name for i in self.session.get_inputs()]
        outputs = [o.name for o in self.session.get_outputs()]
        if inputs != [INPUT_NAME] or outputs != list(OUTPUT_NAMES):
            raise ValueError(
                f"the ONNX model has inputs {inputs} and outputs {outputs}; expected [{INPUT_NAME!r}] and "
                f"{list(OUTPUT_NAMES)}: export it with `smvision archive build efficientdet --backend onnx`"
            )
        shape = self.session.get_inputs()[0].shape
        size = config.input_size
        if list(shape[1:]) != [3, size, size]:
            raise ValueError(f"the ONNX model takes input {shape}; the archive's config says 3x{size}x{size}")
        self._anchors = AnchorArrays.from_boxes(
            anchor_boxes(
                (size, size), config.pyramid_levels, config.anchor_scale, config.anchor_scales, config.anchor_ratios
            )
        )

    def preprocess(self, images: Sequence[np.ndarray]) -> tuple[np.ndarray, list[Resized]]:
        """zylo117's resize, normalisation and padding in numpy (OpenCV-exact, as the torch path)."""
        return preprocess_numpy(images, self.config.input_size, self.config.mean, self.config.std)

    def forward(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The network alone: (B, 3, H, W) float32 -> regression (B, A, 4), classification (B, A, C)."""
        regression, classification = self.session.run(list(OUTPUT_NAMES), {INPUT_NAME: batch})
        return regression, classification

    def postprocess(
        self,
        outputs: tuple[np.ndarray, np.ndarray],
        pred_thresholds: list[float],
        iou_thresholds: list[float],
        fits: list[Resized],
        max_detections: Sequence[int | None] | None,
    ) -> list[Detections]:
        """Decoding, thresholds and an NMS deciding as torchvision's batched_nms, in numpy."""
        size = (self.config.input_size, self.config.input_size)
        regression, classification = outputs
        return postprocess_numpy(
            regression, classification, self._anchors, size, pred_thresholds, iou_thresholds, fits, max_detections
        )
