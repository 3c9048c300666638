"""zylo117's preprocessing, in torch: RGB / 255, normalise, resize the long side, pad.

Per image: normalise in float with mean/std, resize so the long side is `size` and the
short side int(size / long * short) with bilinear interpolation equal to OpenCV's
INTER_LINEAR (as zylo117 does with cv2.resize), and place it at the top-left of a zero
canvas (size x size).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from .resize import Resized, check_image, linear_taps, resized_size

__all__ = ["Resized", "check_image", "linear_taps", "normalise_resize", "preprocess", "resized_size"]


def _normalise_(x: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """In place: (x / 255 - mean) / std over a trailing channel axis."""
    return x.div_(255.0).sub_(mean).div_(std)


def normalise_resize(
    image: np.ndarray, new_h: int, new_w: int, mean: Tensor, std: Tensor, device: torch.device
) -> Tensor:
    """(new_h, new_w, 3) float32 on device: the normalised image, resized as cv2.resize(INTER_LINEAR).

    Normalising is per pixel, so only the source rows the interpolation reads are
    gathered (on the host, as uint8), moved, converted and normalised: the result equals
    normalise-then-resize on the whole image.
    """
    height, width = image.shape[:2]
    if (new_h, new_w) == (height, width):
        # astype gives a fresh, writable array: no copy of the caller's (maybe read-only) image.
        return _normalise_(torch.from_numpy(image.astype(np.float32)).to(device), mean, std)
    y0, y1, wy0, wy1 = linear_taps(height, new_h)
    x0, x1, wx0, wx1 = (torch.tensor(a, device=device) for a in linear_taps(width, new_w))
    rows = torch.from_numpy(np.take(image, np.concatenate((y0, y1)), axis=0)).to(device)
    rows = _normalise_(rows.to(torch.float32), mean, std)
    # Horizontal pass on every needed source row, then the vertical blend (cv2's order).
    horizontal = rows.index_select(1, x0).mul_(wx0[:, None]).addcmul_(rows.index_select(1, x1), wx1[:, None])
    top, bottom = horizontal[:new_h], horizontal[new_h:]
    wy0_t, wy1_t = torch.tensor(wy0, device=device), torch.tensor(wy1, device=device)
    return top.mul_(wy0_t[:, None, None]).addcmul_(bottom, wy1_t[:, None, None])


def preprocess(
    images: Sequence[np.ndarray],
    size: int,
    mean: Sequence[float],
    std: Sequence[float],
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> tuple[Tensor, list[Resized]]:
    """A channels_last batch (B, 3, size, size) of `dtype` on `device`, and how each image fits."""
    device = torch.device(device)
    sizes = [check_image(image, i).shape[:2] for i, image in enumerate(images)]
    mean_t = torch.tensor(mean, dtype=torch.float32, device=device)
    std_t = torch.tensor(std, dtype=torch.float32, device=device)
    batch = torch.empty((len(images), 3, size, size), dtype=dtype, device=device, memory_format=torch.channels_last)
    batch.zero_()
    fits = []
    for i, (image, (height, width)) in enumerate(zip(images, sizes)):
        new_h, new_w = resized_size(height, width, size)
        resized = normalise_resize(image, new_h, new_w, mean_t, std_t, device)
        batch[i, :, :new_h, :new_w] = resized.permute(2, 0, 1)
        fits.append(Resized(old_w=width, old_h=height, new_w=new_w, new_h=new_h))
    return batch, fits
