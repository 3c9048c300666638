"""zylo117's preprocessing, in torch: RGB / 255, normalise, resize the long side, pad.

Per image: normalise in float with mean/std, resize so the long side is `size` and the
short side int(size / long * short) with bilinear interpolation equal to OpenCV's
INTER_LINEAR, and place it at the top-left of a zero canvas (size x size).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class Resized:
    """How one image was fitted into the canvas; ratios map input pixels back to original ones."""

    old_w: int
    old_h: int
    new_w: int
    new_h: int

    @property
    def ratio_w(self) -> float:
        return self.new_w / self.old_w

    @property
    def ratio_h(self) -> float:
        return self.new_h / self.old_h


def resized_size(height: int, width: int, size: int) -> tuple[int, int]:
    """(new_h, new_w): the long side becomes `size`, the short int(size / long * short).

    The short side is kept at least 1 pixel (zylo117 would fail on such slivers).
    """
    if width > height:
        return max(1, int(size / width * height)), size
    return size, max(1, int(size / height * width))


def check_image(image: object, index: int = 0) -> np.ndarray:
    """An HxWx3 uint8 array, or ValueError saying what is wrong with image `index`."""
    if not isinstance(image, np.ndarray):
        raise ValueError(f"image {index} must be a numpy array, got {type(image).__name__}")
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image {index} must be HxWx3 uint8 RGB, got {image.dtype} {image.shape}")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"image {index} is empty: {image.shape}")
    return image


def normalise(image: np.ndarray, mean: Tensor, std: Tensor, device: torch.device) -> Tensor:
    """(1, 3, H, W) float32 of (image / 255 - mean) / std; mean and std are (1, 3, 1, 1)."""
    x = torch.from_numpy(np.ascontiguousarray(image)).to(device, non_blocking=True)
    x = x.permute(2, 0, 1).unsqueeze(0).to(torch.float32)  # channels_last strides, no copy
    return x.div_(255.0).sub_(mean).div_(std)


def resize(x: Tensor, new_h: int, new_w: int) -> Tensor:
    """Bilinear resize matching cv2.resize(..., INTER_LINEAR) on float input."""
    if x.shape[-2:] == (new_h, new_w):
        return x
    return F.interpolate(x, size=(new_h, new_w), mode="bilinear", align_corners=False, antialias=False)


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
    mean_t = torch.tensor(mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    batch = torch.zeros((len(images), 3, size, size), dtype=dtype, device=device).to(
        memory_format=torch.channels_last
    )
    fits = []
    for i, image in enumerate(images):
        height, width = check_image(image, i).shape[:2]
        new_h, new_w = resized_size(height, width, size)
        x = resize(normalise(image, mean_t, std_t, device), new_h, new_w)
        batch[i, :, :new_h, :new_w] = x[0]
        fits.append(Resized(old_w=width, old_h=height, new_w=new_w, new_h=new_h))
    return batch, fits
