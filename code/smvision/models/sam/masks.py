"""Boolean masks (K, H, W) in the formats an answer carries.

- rle: COCO RLE via pycocotools, {"size": [H, W], "counts": str} (pycocotools.mask.decode
  reads it back).
- png: base64 PNG, 1 bit per pixel (Pillow).
- polygon: the outlines as lists of [x, y] rings (OpenCV contours; outer outlines and
  the outlines of holes, so an even-odd fill gives the mask back).
- npy: base64 .npy of the (H, W) bool mask.
"""

from __future__ import annotations

import base64
import io
from typing import Any, Callable

import numpy as np

MaskEncoder = Callable[[np.ndarray], list]


def encode_masks(masks: np.ndarray, mask_format: str) -> list:
    """One encoded mask per mask in masks (bool, (K, H, W)), in mask_format."""
    return ENCODERS[mask_format](masks)


def rle(masks: np.ndarray) -> list[dict[str, Any]]:
    """COCO RLE (column-major run lengths, compressed to a string) per mask."""
    from pycocotools import mask as mask_utils

    # (K, H, W) -> (H, W, K) Fortran order, as pycocotools wants; no copy when the masks
    # are stored column by column already.
    stacked = np.asfortranarray(masks.transpose(1, 2, 0)).view(np.uint8)
    encoded = mask_utils.encode(stacked)
    return [{"size": [int(s) for s in e["size"]], "counts": e["counts"].decode("ascii")} for e in encoded]


def png(masks: np.ndarray) -> list[str]:
    """Base64 1-bit PNG per mask."""
    from PIL import Image

    out = []
    for mask in masks:
        buffer = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(mask), mode=None).convert("1").save(buffer, format="PNG", compress_level=1)
        out.append(base64.b64encode(buffer.getvalue()).decode("ascii"))
    return out


def polygon(masks: np.ndarray) -> list[list[list[list[int]]]]:
    """Per mask, its outline rings as [[x, y], ...] (outer outlines and holes)."""
    import cv2

    out = []
    for mask in masks:
        contours, _ = cv2.findContours(np.ascontiguousarray(mask).view(np.uint8), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
        out.append([c.reshape(-1, 2).tolist() for c in contours])
    return out


def npy(masks: np.ndarray) -> list[str]:
    """Base64 .npy of each (H, W) bool mask."""
    out = []
    for mask in masks:
        buffer = io.BytesIO()
        np.save(buffer, np.ascontiguousarray(mask, dtype=bool), allow_pickle=False)
        out.append(base64.b64encode(buffer.getvalue()).decode("ascii"))
    return out


ENCODERS: dict[str, MaskEncoder] = {"rle": rle, "png": png, "polygon": polygon, "npy": npy}
