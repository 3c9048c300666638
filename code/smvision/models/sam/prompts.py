"""SAM prompts as the decoder takes them: checked arrays in original-image pixels.

The kinds turn a request's parameters into Prompts (smvision.kinds.sam_prompts); the
decoder (smvision.models.sam.decoder) reads them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: low-res mask logits' side (mask_input and the answers' low_res_logits)
MASK_INPUT_SIZE = 256


@dataclass(frozen=True, eq=False)
class Prompts:
    """Checked prompts in original-image pixels (x, y), ready for SamDecoder.decode."""

    points: np.ndarray | None = None  # (N, 2) float32
    labels: np.ndarray | None = None  # (N,) float32 of 0 / 1
    box: np.ndarray | None = None  # (4,) float32 x1, y1, x2, y2
    mask_input: np.ndarray | None = None  # (1, 1, 256, 256) float32 logits
    multimask_output: bool = True
    mask_format: str = "rle"
    return_logits: bool = False
    geotransform: tuple[float, ...] | None = None  # GDAL order, for mask_format geojson
    crs: str | None = None  # "EPSG:<code>", for mask_format geojson
    simplify_tolerance: float = 0.0  # pixels, for mask_format geojson
