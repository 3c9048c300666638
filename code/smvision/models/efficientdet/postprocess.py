"""zylo117's postprocessing: decode, clip, threshold, class-aware NMS, back to original pixels."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .detections import Detections
from .nms import batched_nms_tensor as batched_nms
from .preprocess import Resized


@dataclass(frozen=True)
class AnchorGeometry:
    """Anchor centres and sizes (float32, shape (A,)), derived from (y1, x1, y2, x2) boxes."""

    yc: Tensor
    xc: Tensor
    h: Tensor
    w: Tensor

    @classmethod
    def from_boxes(cls, anchors: Tensor) -> "AnchorGeometry":
        return cls(
            yc=(anchors[:, 0] + anchors[:, 2]) / 2,
            xc=(anchors[:, 1] + anchors[:, 3]) / 2,
            h=anchors[:, 2] - anchors[:, 0],
            w=anchors[:, 3] - anchors[:, 1],
        )

    def select(self, index: Tensor) -> "AnchorGeometry":
        return AnchorGeometry(self.yc[index], self.xc[index], self.h[index], self.w[index])


def decode_boxes(regression: Tensor, anchors: AnchorGeometry) -> Tensor:
    """(..., 4) deltas (dy, dx, dh, dw) -> (..., 4) boxes (x1, y1, x2, y2)."""
    w = regression[..., 3].exp() * anchors.w
    h = regression[..., 2].exp() * anchors.h
    yc = regression[..., 0] * anchors.h + anchors.yc
    xc = regression[..., 1] * anchors.w + anchors.xc
    return torch.stack((xc - w / 2.0, yc - h / 2.0, xc + w / 2.0, yc + h / 2.0), dim=-1)


def clip_boxes_(boxes: Tensor, height: int, width: int) -> Tensor:
    """In place, as zylo117's ClipBoxes: x1, y1 >= 0; x2 <= width - 1; y2 <= height - 1."""
    boxes[..., 0].clamp_(min=0)
    boxes[..., 1].clamp_(min=0)
    boxes[..., 2].clamp_(max=width - 1)
    boxes[..., 3].clamp_(max=height - 1)
    return boxes


def postprocess(
    regression: Tensor,
    classification: Tensor,
    anchors: AnchorGeometry,
    input_hw: tuple[int, int],
    pred_thresholds: Sequence[float],
    iou_thresholds: Sequence[float],
    fits: Sequence[Resized],
    max_detections: Sequence[int] | None = None,
) -> list[Detections]:
    """Per image: keep anchors whose best class score > its threshold, NMS per class, rescale.

    regression (B, A, 4) and classification (B, A, C) are the model's outputs for a
    batch whose padded input size is input_hw; fits says how each image was resized.
    max_detections[i], if given, keeps image i's best-scoring detections only (NMS
    answers best first, so below the cap the detections are zylo117's, unchanged).
    """
    height, width = input_hw
    scores_all, classes_all = classification.float().max(dim=2)
    regression = regression.float()
    results = []
    for i, fit in enumerate(fits):
        keep = torch.nonzero(scores_all[i] > pred_thresholds[i]).squeeze(1)
        if keep.numel() == 0:
            results.append(Detections.empty())
            continue
        boxes = clip_boxes_(decode_boxes(regression[i, keep], anchors.select(keep)), height, width)
        scores = scores_all[i, keep]
        classes = classes_all[i, keep]
        order = batched_nms(boxes, scores, classes, float(iou_thresholds[i]))
        if max_detections is not None:
            order = order[: max_detections[i]]
        ratios = torch.tensor(
            [fit.ratio_w, fit.ratio_h, fit.ratio_w, fit.ratio_h], dtype=torch.float32, device=boxes.device
        )
        results.append(
            Detections(
                boxes=(boxes[order] / ratios).cpu().numpy(),
                scores=scores[order].cpu().numpy(),
                class_ids=classes[order].cpu().numpy().astype(np.int64, copy=False),
            )
        )
    return results
