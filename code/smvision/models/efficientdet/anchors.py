"""Anchor boxes, in the order the heads emit them: level -> y -> x -> scale -> ratio.

Boxes are (y1, x1, y2, x2) in input pixels, computed in float64 and stored as float32,
exactly as zylo117's Anchors module does. They are not part of the state_dict.
anchor_boxes is numpy only (the ONNX Runtime path never imports torch);
generate_anchors gives the same boxes as a torch tensor.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np


def anchor_boxes(
    image_hw: tuple[int, int],
    pyramid_levels: Sequence[int],
    anchor_scale: float,
    scales: Sequence[float],
    ratios: Sequence[tuple[float, float]],
) -> np.ndarray:
    """All anchors for an input of image_hw = (H, W): a float32 array (num_anchors, 4)."""
    height, width = image_hw
    per_level = []
    for level in pyramid_levels:
        stride = 2**level
        if height % stride or width % stride:
            raise ValueError(f"input size {height}x{width} must be a multiple of the P{level} stride {stride}")
        # Half sizes per (scale, ratio), scale outer: x uses ratio[0], y uses ratio[1].
        halves = []
        for scale, ratio in itertools.product(scales, ratios):
            base = anchor_scale * stride * scale
            halves.append((base * ratio[1] / 2.0, base * ratio[0] / 2.0))
        half = np.array(halves, dtype=np.float64)  # (K, 2) as (hy, hx)
        ys = np.arange(stride / 2, height, stride, dtype=np.float64)
        xs = np.arange(stride / 2, width, stride, dtype=np.float64)
        yy, xx = np.meshgrid(ys, xs, indexing="ij")
        centres = np.stack((yy.reshape(-1), xx.reshape(-1)), axis=1)[:, None, :]  # (P, 1, 2)
        boxes = np.concatenate((centres - half, centres + half), axis=2)  # (P, K, 4) y1 x1 y2 x2
        per_level.append(boxes.reshape(-1, 4))
    return np.concatenate(per_level).astype(np.float32)


def generate_anchors(
    image_hw: tuple[int, int],
    pyramid_levels: Sequence[int],
    anchor_scale: float,
    scales: Sequence[float],
    ratios: Sequence[tuple[float, float]],
    device: Any = None,
) -> Any:
    """anchor_boxes as a float32 torch tensor (num_anchors, 4) on `device`."""
    import torch

    boxes = anchor_boxes(image_hw, pyramid_levels, anchor_scale, scales, ratios)
    return torch.from_numpy(boxes).to(device=device)
