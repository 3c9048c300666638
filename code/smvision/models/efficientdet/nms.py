"""Class-aware non-maximum suppression in numpy, deciding exactly as torchvision's batched_nms.

No torch or torchvision import: the ONNX Runtime path uses it as is, and the torch path
through batched_nms_tensor, so neither pulls in `import torchvision` (which imports
torch._dynamo and costs about a second at start).

torchvision 0.x `batched_nms` on CPU, restated:
- up to 1000 boxes (boxes.numel() <= 4000): the "coordinate trick": every box is shifted by
  class_id * (max coordinate + 1) in float32, and one NMS runs over all of them;
- more boxes: one NMS per class on the unshifted boxes, kept indices sorted by score.
One NMS: order by score, descending, stable; areas (x2 - x1) * (y2 - y1) in float32; a box
is suppressed when inter / (area_i + area_j - inter), computed in float32, is greater than
the threshold compared in double. Every step below uses the same float32 operations in
the same order, so the same boxes are kept in the same order.
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: torchvision switches from the coordinate trick to per-class NMS above this many values (boxes * 4)
COORDINATE_TRICK_MAX_NUMEL = 4000


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Indices of the boxes (N, 4) x1 y1 x2 y2 float32 that survive greedy NMS, best score first."""
    boxes = np.asarray(boxes, dtype=np.float32)
    order = np.argsort(-np.asarray(scores, dtype=np.float32), kind="stable")
    if order.size == 0:
        return order.astype(np.int64)
    x1, y1, x2, y2 = (np.ascontiguousarray(boxes[order, k]) for k in range(4))
    areas = (x2 - x1) * (y2 - y1)
    threshold = np.float64(iou_threshold)  # a float64 scalar: compare as torchvision does, in double
    zero = np.float32(0.0)
    keep = []
    alive = np.arange(order.size)  # positions in `order` not yet kept or suppressed, best first
    while alive.size:
        i = alive[0]
        keep.append(i)
        rest = alive[1:]
        if rest.size == 0:
            break
        w = np.maximum(zero, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]))
        h = np.maximum(zero, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]))
        inter = w * h
        iou = inter / ((areas[i] + areas[rest]) - inter)
        alive = rest[~(iou.astype(np.float64) > threshold)]
    return order[np.asarray(keep, dtype=np.int64)]


def batched_nms(boxes: np.ndarray, scores: np.ndarray, class_ids: np.ndarray, iou_threshold: float) -> np.ndarray:
    """NMS within each class: indices kept, best score first (torchvision.ops.batched_nms's decisions)."""
    boxes = np.asarray(boxes, dtype=np.float32)
    scores = np.asarray(scores, dtype=np.float32)
    class_ids = np.asarray(class_ids)
    if boxes.shape[0] == 0:
        return np.zeros((0,), np.int64)
    if boxes.size <= COORDINATE_TRICK_MAX_NUMEL:
        max_coordinate = boxes.max()
        offsets = class_ids.astype(np.float32) * (max_coordinate + np.float32(1.0))
        return nms(boxes + offsets[:, None], scores, iou_threshold)
    kept = []
    for class_id in np.unique(class_ids):
        members = np.flatnonzero(class_ids == class_id)
        kept.append(members[nms(boxes[members], scores[members], iou_threshold)])
    kept_all = np.sort(np.concatenate(kept))
    return kept_all[np.argsort(-scores[kept_all], kind="stable")]


def batched_nms_tensor(boxes: Any, scores: Any, class_ids: Any, iou_threshold: float) -> Any:
    """batched_nms for torch tensors (any device): an int64 index tensor on the boxes' device."""
    import torch

    keep = batched_nms(
        boxes.detach().float().cpu().numpy(),
        scores.detach().float().cpu().numpy(),
        class_ids.detach().cpu().numpy(),
        iou_threshold,
    )
    return torch.from_numpy(keep).to(boxes.device)
