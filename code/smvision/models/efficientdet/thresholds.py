"""Per-image threshold lists, checked the same way by every runtime's detector."""

from __future__ import annotations

import math
from collections.abc import Sequence


def check_thresholds(values: Sequence[float], name: str, count: int) -> list[float]:
    """`count` floats in [0, 1], or ValueError naming `name`."""
    if len(values) != count:
        raise ValueError(f"{name} has {len(values)} value(s) for {count} image(s)")
    out = []
    for v in values:
        try:
            f = float(v)
        except (TypeError, ValueError):
            f = math.nan
        if not math.isfinite(f) or not 0.0 <= f <= 1.0:
            raise ValueError(f"{name} values must be numbers in [0, 1], got {v!r}")
        out.append(f)
    return out
