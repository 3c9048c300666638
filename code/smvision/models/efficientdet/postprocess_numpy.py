"""zylo117's postprocessing in numpy (for the ONNX Runtime path): the same float32 steps
as postprocess.py (decode, clip to the padded input, threshold, class-aware NMS, back to
original pixels), with NMS deciding exactly as torchvision's batched_nms."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .detections import Detections
from .nms import batched_nms
from .resize import Resized


@dataclass(frozen=True)
class AnchorArrays:
    """Anchor centres and sizes (float32, shape (A,)), derived from (y1, x1, y2, x2) boxes."""

    yc: np.ndarray
    xc: np.ndarray
    h: np.ndarray
    w: np.ndarray

    @classmethod
    def from_boxes(cls, anchors: np.ndarray) -> "AnchorArrays":
        two = np.float32(2.0)
        return cls(
            yc=(anchors[:, 0] + anchors[:, 2]) / two,
            xc=(anchors[:, 1] + anchors[:, 3]) / two,
            h=anchors[:, 2] - anchors[:, 0],
            w=anchors[:, 3] - anchors[:, 1],
        )

    def select(self, index: np.ndarray) -> "AnchorArrays":
        return AnchorArrays(self.yc[index], self.xc[index], self.h[index], self.w[index])


def decode_boxes(regression: np.ndarray, anchors: AnchorArrays) -> np.ndarray:
    """(N, 4) deltas (dy, dx, dh, dw) -> (N, 4) float32 boxes (x1, y1, x2, y2)."""
    two = np.float32(2.0)
    w = np.exp(regression[:, 3]) * anchors.w
    h = np.exp(regression[:, 2]) * anchors.h
    yc = regression[:, 0] * anchors.h + anchors.yc
    xc = regression[:, 1] * anchors.w + anchors.xc
    return np.stack((xc - w / two, yc - h / two, xc + w / two, yc + h / two), axis=-1)


def clip_boxes_(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    """In place, as zylo117's ClipBoxes: x1, y1 >= 0; x2 <= width - 1; y2 <= height - 1."""
    np.maximum(boxes[:, :2], np.float32(0.0), out=boxes[:, :2])
    np.minimum(boxes[:, 2], np.float32(width - 1), out=boxes[:, 2])
    np.minimum(boxes[:, 3], np.float32(height - 1), out=boxes[:, 3])
    return boxes


def postprocess_numpy(
    regression: np.ndarray,
    classification: np.ndarray,
    anchors: AnchorArrays,
    input_hw: tuple[int, int],
    pred_thresholds: Sequence[float],
    iou_thresholds: Sequence[float],
    fits: Sequence[Resized],
    max_detections: Sequence[int | None] | None = None,
) -> list[Detections]:
    """Per image: keep anchors whose best class score > its threshold, NMS per class, rescale.

    regression (B, A, 4) and classification (B, A, C) float32 are the network's outputs
    for a batch whose padded input size is input_hw; fits says how each image was
    resized; max_detections (per image, None = all) keeps the best that many.
    """
    height, width = input_hw
    results = []
    for i, fit in enumerate(fits):
        scores_all = classification[i].max(axis=1)
        keep = np.flatnonzero(scores_all > np.float32(pred_thresholds[i]))
        if keep.size == 0:
            results.append(Detections.empty())
            continue
        boxes = clip_boxes_(decode_boxes(regression[i, keep].astype(np.float32), anchors.select(keep)), height, width)
        scores = scores_all[keep]
        classes = classification[i, keep].argmax(axis=1)
        order = batched_nms(boxes, scores, classes, float(iou_thresholds[i]))
        limit = None if max_detections is None else max_detections[i]
        if limit is not None:
            order = order[:limit]
        ratios = np.array([fit.ratio_w, fit.ratio_h, fit.ratio_w, fit.ratio_h], dtype=np.float32)
        results.append(
            Detections(
                boxes=boxes[order] / ratios,
                scores=scores[order].astype(np.float32, copy=False),
                class_ids=classes[order].astype(np.int64, copy=False),
            )
        )
    return results
