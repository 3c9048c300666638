"""THE percentile definition for every benchmark in this project.

statistics.quantiles(method="inclusive"): linear interpolation between closest ranks of
the sample itself (numpy's default); p0 and p100 are the minimum and maximum.
"""

from __future__ import annotations

import statistics
from typing import Iterable, Sequence


def percentile(values: Sequence[float], q: float) -> float:
    """The q-quantile of values for q in whole percents, e.g. percentile(latencies, 0.95)."""
    if not values:
        raise ValueError("percentile of no values")
    percent = round(q * 100)
    if abs(q * 100 - percent) > 1e-9 or not 0 <= percent <= 100:
        raise ValueError(f"q must be a whole percent in [0, 1] (0.5, 0.95, 0.99), got {q}")
    if percent == 0:
        return min(values)
    if percent == 100:
        return max(values)
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[percent - 1]


def percentiles(values: Sequence[float], qs: Iterable[float] = (0.5, 0.95, 0.99)) -> dict[float, float]:
    """{q: percentile(values, q)} for each q."""
    return {q: percentile(values, q) for q in qs}
