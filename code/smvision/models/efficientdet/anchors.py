"""Anchor boxes, in the order the heads emit them: level -> y -> x -> scale -> ratio.

Boxes are (y1, x1, y2, x2) in input pixels, computed in float64 and stored as float32,
exactly as zylo117's Anchors module does. They are not part of the state_dict.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from torch import Tensor


def generate_anchors(
    image_hw: tuple[int, int],
    pyramid_levels: Sequence[int],
    anchor_scale: float,
    scales: Sequence[float],
    ratios: Sequence[tuple[float, float]],
    device: torch.device | str | None = None,
) -> Tensor:
    """All anchors for an input of image_hw = (H, W): a float32 tensor (num_anchors, 4)."""
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
        half = torch.tensor(halves, dtype=torch.float64)  # (K, 2) as (hy, hx)
        ys = torch.arange(stride / 2, height, stride, dtype=torch.float64)
        xs = torch.arange(stride / 2, width, stride, dtype=torch.float64)
        yy, xx = torch.meshgrid(ys, xs, indexing="ij")
        centres = torch.stack((yy.reshape(-1), xx.reshape(-1)), dim=1)[:, None, :]  # (P, 1, 2)
        boxes = torch.cat((centres - half, centres + half), dim=2)  # (P, K, 4) y1 x1 y2 x2
        per_level.append(boxes.reshape(-1, 4))
    return torch.cat(per_level).to(dtype=torch.float32, device=device)

