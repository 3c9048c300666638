"""SAM's ResizeLongestSide(1024), with no side rounded to 0 pixels.

segment_anything resizes an image so its long side is 1024 and rounds the other one to
the nearest pixel: a 5000x1 image (or a crop, or an `original_size` of [2, 20000]) gets a
side of 0 px, and the resize fails. Every SAM path here takes its resized size from
input_size(), which keeps each side at least 1 px; everything else is upstream's.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from smvision.models.sam.build import IMAGE_SIZE


def input_size(original_size: tuple[int, int], long_side: int = IMAGE_SIZE) -> tuple[int, int]:
    """(h, w) of an image of original_size (H, W) resized so its long side is long_side,
    as ResizeLongestSide rounds it, each side at least 1 px."""
    height, width = original_size
    scale = long_side / max(height, width)
    return max(1, int(height * scale + 0.5)), max(1, int(width * scale + 0.5))


@cache
def _resize_class() -> type:
    from segment_anything.utils.transforms import ResizeLongestSide

    class SamResize(ResizeLongestSide):
        """ResizeLongestSide whose image, coordinates and boxes all use input_size()."""

        @staticmethod
        def get_preprocess_shape(oldh: int, oldw: int, long_side_length: int) -> tuple[int, int]:
            return input_size((oldh, oldw), long_side_length)

    return SamResize


def resize_longest_side(long_side: int = IMAGE_SIZE) -> Any:
    """segment_anything's ResizeLongestSide(long_side) (apply_image, apply_coords,
    apply_boxes), with input_size()'s sides."""
    return _resize_class()(long_side)
