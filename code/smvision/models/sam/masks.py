"""Boolean masks (K, H, W) in the formats an answer carries.

- rle: COCO RLE via pycocotools, {"size": [H, W], "counts": str} (pycocotools.mask.decode
  reads it back).
- png: base64 PNG, 1 bit per pixel (Pillow).
- polygon: the outlines as lists of [x, y] rings (OpenCV contours; outer outlines and
  the outlines of holes, so an even-odd fill gives the mask back).
- geojson: a GeoJSON Feature per mask (MultiPolygon, holes kept), exact pixel-edge
  outlines from rasterio.features.shapes, optionally simplified and georeferenced
  (smvision.models.sam.geojson); the answer wraps them in a FeatureCollection.
- npy: base64 .npy of the (H, W) bool mask.

Masks come either as a bool array (K, H, W) or as MaskRuns (COCO run lengths, what
SamDecoder produces without ever making a full-size array): RLE is then only compressed,
the other formats decode the runs once (pycocotools, column-major, no copy after).
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Callable

import numpy as np

MaskEncoder = Callable[[np.ndarray], list]


@dataclass(frozen=True, eq=False)
class MaskRuns:
    """K masks of size (H, W) as pycocotools compressed RLE objects ({"size": [H, W],
    "counts": bytes}): column-major run lengths, the first of zeros.

    Array-like: shape (K, H, W), dtype bool, indexing, iteration and np.asarray() give
    the masks themselves (decoded once, on first use)."""

    size: tuple[int, int]
    rles: list[dict[str, Any]]

    @classmethod
    def from_counts(cls, size: tuple[int, int], counts: list[np.ndarray]) -> "MaskRuns":
        """From uncompressed run lengths per mask (each summing to H * W)."""
        from pycocotools import mask as mask_utils

        height, width = size
        objects = [{"size": [height, width], "counts": c} for c in counts]
        return cls(size, mask_utils.frPyObjects(objects, height, width) if objects else [])

    @classmethod
    def from_columns(cls, columns: np.ndarray) -> "MaskRuns":
        """From bool masks stored column by column: (K, W, H) C-contiguous, i.e. the
        (H, W, K) Fortran-order array pycocotools encodes, without a copy."""
        from pycocotools import mask as mask_utils

        count, width, height = columns.shape
        return cls((height, width), mask_utils.encode(columns.view(np.uint8).transpose(2, 1, 0)) if count else [])

    def __len__(self) -> int:
        return len(self.rles)

    @property
    def shape(self) -> tuple[int, int, int]:
        return (len(self.rles), *self.size)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(bool)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        masks = self.dense.view(np.ndarray)
        return masks if dtype is None else masks.astype(dtype)

    def __getitem__(self, index: Any) -> np.ndarray:
        return self.dense[index]

    def __iter__(self):
        return iter(self.dense)

    def rle(self) -> list[dict[str, Any]]:
        """COCO RLE per mask with the counts as a str (JSON-ready)."""
        height, width = self.size
        return [{"size": [height, width], "counts": r["counts"].decode("ascii")} for r in self.rles]

    @cached_property
    def dense(self) -> "RunMasks":
        """(K, H, W) bool, read-only, a transposed view of column-major memory; it keeps
        these runs, so encode_masks(runs.dense, "rle") does not encode again."""
        from pycocotools import mask as mask_utils

        if not self.rles:
            masks = np.zeros((0, *self.size), dtype=bool)
        else:  # decode gives (H, W, K) in Fortran order
            masks = mask_utils.decode(self.rles).view(bool).transpose(2, 0, 1)
        masks = masks.view(RunMasks)
        masks.runs = self
        masks.flags.writeable = False
        return masks


class RunMasks(np.ndarray):
    """MaskRuns.dense: a bool array that knows the runs it was decoded from. Slices and
    other arrays made from it do not (their `runs` is None)."""

    runs: MaskRuns | None = None

    def __array_finalize__(self, obj: Any) -> None:
        self.runs = None


def encode_masks(masks: np.ndarray | MaskRuns, mask_format: str, geojson_options: Any = None) -> list:
    """One encoded mask per mask in masks (bool (K, H, W), or MaskRuns), in mask_format;
    geojson_options (a GeoJsonOptions: geotransform, CRS, simplification) for "geojson"."""
    runs = masks if isinstance(masks, MaskRuns) else getattr(masks, "runs", None)
    if runs is not None and mask_format == "rle":
        return runs.rle()
    if isinstance(masks, MaskRuns):
        masks = masks.dense
    if mask_format == "geojson":
        return geojson(np.asarray(masks), geojson_options)
    return ENCODERS[mask_format](np.asarray(masks))


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


def geojson(masks: np.ndarray, options: Any = None) -> list[dict[str, Any]]:
    """Per mask a GeoJSON Feature (MultiPolygon, holes kept; properties {"mask_index": i}),
    in pixel coordinates or, with options.georef, map coordinates: see
    smvision.models.sam.geojson (rasterio.features.shapes + shapely)."""
    from smvision.models.sam.geojson import GeoJsonOptions, mask_features

    return mask_features(masks, options or GeoJsonOptions())


def npy(masks: np.ndarray) -> list[str]:
    """Base64 .npy of each (H, W) bool mask."""
    out = []
    for mask in masks:
        buffer = io.BytesIO()
        np.save(buffer, np.ascontiguousarray(mask, dtype=bool), allow_pickle=False)
        out.append(base64.b64encode(buffer.getvalue()).decode("ascii"))
    return out


ENCODERS: dict[str, MaskEncoder] = {"rle": rle, "png": png, "polygon": polygon, "geojson": geojson, "npy": npy}
