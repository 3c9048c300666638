"""zylo117's preprocessing in numpy: the resize rule, OpenCV-exact bilinear taps, a batch.

Per image: normalise in float with mean/std, resize so the long side is `size` and the
short side int(size / long * short) with bilinear interpolation equal to OpenCV's
INTER_LINEAR (as zylo117 does with cv2.resize), and place it at the top-left of a zero
canvas (size x size). No torch here: the ONNX Runtime path uses preprocess_numpy; the
torch path (preprocess.py) uses the same taps on its device.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np


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


@lru_cache(maxsize=512)
def linear_taps(src: int, dst: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """OpenCV INTER_LINEAR taps for resizing one axis from src to dst pixels.

    Returns (index0, index1, weight0, weight1): output i = in[index0]*weight0 + in[index1]*weight1.
    Like OpenCV, the source coordinate (i + 0.5) * src / dst - 0.5 and its fraction are
    computed in double before the weights become float32, and samples past either edge
    repeat the edge pixel. (torch's bilinear F.interpolate works the coordinate out in
    float32 and so differs from cv2.resize by up to ~2e-4 on normalised images.)
    """
    scale = 1.0 / (dst / src)
    coord = (np.arange(dst, dtype=np.float64) + 0.5) * scale - 0.5
    first = np.floor(coord)
    frac = (coord - first).astype(np.float32)
    first = first.astype(np.int64)
    before, after = first < 0, first >= src - 1
    frac[before | after] = 0.0
    first[before] = 0
    first[after] = src - 1
    second = np.minimum(first + 1, src - 1)
    taps = (first, second, np.float32(1.0) - frac, frac)
    for a in taps:
        a.setflags(write=False)  # cached: shared between calls
    return taps


def _normalise(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """In place on a float32 array: (x / 255 - mean) / std over a trailing channel axis."""
    x /= np.float32(255.0)
    x -= mean
    x /= std
    return x


def normalise_resize_numpy(image: np.ndarray, new_h: int, new_w: int, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """(new_h, new_w, 3) float32: the normalised image, resized as cv2.resize(INTER_LINEAR).

    The same float32 operations in the same order as the torch path; only the source
    rows the interpolation reads are converted and normalised.
    """
    height, width = image.shape[:2]
    if (new_h, new_w) == (height, width):
        return _normalise(image.astype(np.float32), mean, std)
    y0, y1, wy0, wy1 = linear_taps(height, new_h)
    x0, x1, wx0, wx1 = linear_taps(width, new_w)
    rows = _normalise(np.take(image, np.concatenate((y0, y1)), axis=0).astype(np.float32), mean, std)
    # Horizontal pass on every needed source row, then the vertical blend (cv2's order).
    horizontal = np.take(rows, x0, axis=1)
    horizontal *= wx0[:, None]
    right = np.take(rows, x1, axis=1)
    right *= wx1[:, None]
    horizontal += right
    top, bottom = horizontal[:new_h], horizontal[new_h:]
    top *= wy0[:, None, None]
    bottom *= wy1[:, None, None]
    top += bottom
    return top


def preprocess_numpy(
    images: Sequence[np.ndarray], size: int, mean: Sequence[float], std: Sequence[float]
) -> tuple[np.ndarray, list[Resized]]:
    """A contiguous float32 NCHW batch (B, 3, size, size) and how each image fits."""
    sizes = [check_image(image, i).shape[:2] for i, image in enumerate(images)]
    mean_a = np.asarray(mean, dtype=np.float32)
    std_a = np.asarray(std, dtype=np.float32)
    batch = np.zeros((len(images), 3, size, size), dtype=np.float32)
    fits = []
    for i, (image, (height, width)) in enumerate(zip(images, sizes)):
        new_h, new_w = resized_size(height, width, size)
        resized = normalise_resize_numpy(image, new_h, new_w, mean_a, std_a)
        batch[i, :, :new_h, :new_w] = resized.transpose(2, 0, 1)
        fits.append(Resized(old_w=width, old_h=height, new_w=new_w, new_h=new_h))
    return batch, fits
