"""SAM prompts from a request's parameters (the sam-decode and sam kinds' request schema),
checked: every mistake is a 400 (or a 413 past SAM_MAX_POINTS) that says what.

A request may carry `points` [[x, y], ...] with `labels` (1 foreground, 0 background), a
`box` [x1, y1, x2, y2], or both, all in original-image pixels; optionally `mask_input`
(the low-res logits of an earlier round, as base64 .npy), `multimask_output`,
`mask_format` and `return_logits`; with mask_format "geojson", `geotransform` (six
numbers, GDAL order), `crs` (an EPSG code) and `simplify_tolerance` (pixels, >= 0).
At most SAM_MAX_POINTS (256) points per prompt: more is a 413 naming the setting.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np

from smvision.errors import bad_request, too_large
from smvision.geo import parse_crs, parse_geotransform
from smvision.models.sam.prompts import MASK_INPUT_SIZE, Prompts
from smvision.npy import load_npy_base64

MASK_FORMATS = ("rle", "png", "polygon", "geojson", "npy")
GEOJSON_KEYS = ("geotransform", "crs", "simplify_tolerance")
PROMPT_KEYS = ("points", "labels", "box", "mask_input", "multimask_output", "mask_format", "return_logits", *GEOJSON_KEYS)
_MASK_INPUT_SHAPES = ((256, 256), (1, 256, 256), (1, 1, 256, 256))

#: Most points in one prompt unless the settings say otherwise (SAM_MAX_POINTS; 413 beyond).
#: The decoder's time and memory grow with them: on vit_b, two CPU cores, 256 points take
#: 0.35 s and 90 MiB, 1,024 points 1.8 s and 370 MiB, 10,000 points 36 s and 6.4 GB; a
#: prompt has one box at most.
MAX_POINTS_ENV = "SAM_MAX_POINTS"
DEFAULT_MAX_POINTS = 256


def parse_prompts(
    params: Mapping[str, Any], original_size: tuple[int, int], where: str, max_points: int = DEFAULT_MAX_POINTS
) -> Prompts:
    """Prompts from a request's parameters for an image of original_size (H, W), with at
    most max_points points (the kind passes SAM_MAX_POINTS from its settings).

    `mask_input` arrives as a base64 string of .npy bytes holding a 256x256 float array
    (shape (256, 256), (1, 256, 256) or (1, 1, 256, 256)), e.g. the `low_res_logits` an
    earlier answer gave. Raises a 400 (smvision.errors.bad_request) naming what is wrong.
    """
    height, width = original_size
    points = labels = box = None
    if params.get("points") is not None:
        points = _points(params["points"], where, max_points)
        _inside(points, width, height, "points", where)
        if params.get("labels") is None:
            raise bad_request(f"{where}: 'points' need 'labels' (1 foreground, 0 background), one per point")
        labels = _labels(params["labels"], len(points), where)
    elif params.get("labels") is not None:
        raise bad_request(f"{where}: 'labels' given without 'points'")
    if params.get("box") is not None:
        box = _box(params["box"], where)
        _inside(box.reshape(2, 2), width, height, "box", where)
    if points is None and box is None:
        raise bad_request(f"{where}: no prompt: give 'points' with 'labels', a 'box', or both")
    mask_input = _mask_input(params["mask_input"], where) if params.get("mask_input") is not None else None
    mask_format = params.get("mask_format", "rle")
    if mask_format not in MASK_FORMATS:
        raise bad_request(f"{where}: mask_format must be one of {', '.join(MASK_FORMATS)}, got {mask_format!r}")
    geo = {key: params[key] for key in GEOJSON_KEYS if params.get(key) is not None}
    if geo and mask_format != "geojson":
        raise bad_request(f"{where}: {', '.join(geo)} apply to mask_format \"geojson\" only, not {mask_format!r}")
    return Prompts(
        points=points,
        labels=labels,
        box=box,
        mask_input=mask_input,
        multimask_output=_flag(params, "multimask_output", True, where),
        mask_format=mask_format,
        return_logits=_flag(params, "return_logits", False, where),
        geotransform=parse_geotransform(geo["geotransform"], where, original_size) if "geotransform" in geo else None,
        crs=parse_crs(geo["crs"], where) if "crs" in geo else None,
        simplify_tolerance=_tolerance(geo.get("simplify_tolerance", 0.0), where),
    )


def _number(value: Any, name: str, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise bad_request(f"{where}: {name} must be numbers, got {value!r}")
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise bad_request(f"{where}: {name} must be finite numbers, got {value!r}")
    return number


def _points(value: Any, where: str, limit: int) -> np.ndarray:
    if not isinstance(value, list) or not value:
        raise bad_request(f"{where}: 'points' must be a non-empty list of [x, y] pairs")
    if len(value) > limit:
        raise too_large(
            f"{where}: 'points' holds {len(value):,} points, over the limit of {limit:,} per prompt ({MAX_POINTS_ENV})"
        )
    if any(not isinstance(p, (list, tuple)) or len(p) != 2 for p in value):
        raise bad_request(f"{where}: 'points' must be a list of [x, y] pairs, got {value!r}"[:300])
    return np.array([[_number(c, "'points'", where) for c in p] for p in value], dtype=np.float32)


def _labels(value: Any, count: int, where: str) -> np.ndarray:
    if not isinstance(value, list):
        raise bad_request(f"{where}: 'labels' must be a list of 0 / 1, one per point")
    if len(value) != count:
        raise bad_request(f"{where}: {len(value)} labels for {count} points; give one label per point")
    if any(isinstance(v, bool) or v not in (0, 1) for v in value):
        raise bad_request(f"{where}: 'labels' must be 1 (foreground) or 0 (background), got {value!r}"[:300])
    return np.array(value, dtype=np.float32)


def _box(value: Any, where: str) -> np.ndarray:
    if not isinstance(value, list) or len(value) != 4:
        raise bad_request(f"{where}: 'box' must be [x1, y1, x2, y2], got {value!r}"[:300])
    box = np.array([_number(c, "'box'", where) for c in value], dtype=np.float32)
    if box[2] < box[0] or box[3] < box[1]:
        raise bad_request(f"{where}: 'box' must have x2 >= x1 and y2 >= y1, got {value!r}")
    return box


def _inside(xy: np.ndarray, width: int, height: int, name: str, where: str) -> None:
    outside = (xy[:, 0] < 0) | (xy[:, 0] > width) | (xy[:, 1] < 0) | (xy[:, 1] > height)
    if outside.any():
        first = xy[int(np.argmax(outside))].tolist()
        raise bad_request(
            f"{where}: {name} {first} lie outside the image (width {width}, height {height}); "
            "coordinates are [x, y] in original-image pixels"
        )


def _mask_input(value: Any, where: str) -> np.ndarray:
    # from an .npz body an array; else base64 .npy, its header checked against its bytes
    array = value if isinstance(value, np.ndarray) else load_npy_base64(value, f"{where}: 'mask_input'")
    if array.shape not in _MASK_INPUT_SHAPES:
        raise bad_request(
            f"{where}: 'mask_input' must have shape (1, 256, 256) (the low_res_logits of an earlier "
            f"answer), got {getattr(array, 'shape', None)}"
        )
    if array.dtype.kind != "f":
        raise bad_request(f"{where}: 'mask_input' must be float logits, got dtype {array.dtype}")
    if not np.isfinite(array).all():
        raise bad_request(f"{where}: 'mask_input' holds NaN or infinite values")
    return np.ascontiguousarray(array.reshape(1, 1, MASK_INPUT_SIZE, MASK_INPUT_SIZE), dtype=np.float32)


def _tolerance(value: Any, where: str) -> float:
    tolerance = _number(value, "'simplify_tolerance'", where)
    if tolerance < 0:
        raise bad_request(f"{where}: 'simplify_tolerance' is in pixels and must be >= 0, got {value!r}")
    return tolerance


def _flag(params: Mapping[str, Any], name: str, default: bool, where: str) -> bool:
    value = params.get(name, default)
    if not isinstance(value, bool):
        raise bad_request(f"{where}: {name} must be true or false, got {value!r}")
    return value
