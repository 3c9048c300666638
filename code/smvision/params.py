"""Checking the per-request parameters a model kind accepts."""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping

from smvision.errors import bad_request
from smvision.quoting import quote


def check_known(params: Mapping[str, Any], known: Iterable[str], where: str) -> None:
    """400 naming any parameter the model kind does not take (a typo, usually)."""
    known = sorted(known)
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise bad_request(
            f"{where}: unknown parameter {', '.join(quote(n) for n in unknown[:5])}"
            f"{f' and {len(unknown) - 5} more' if len(unknown) > 5 else ''}; "
            f"this model takes {', '.join(known) or 'none'}"
        )


def unit_interval(value: Any, name: str, where: str) -> float:
    """A number in (0, 1], or a 400 that names the parameter and says why."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise bad_request(f"{where}: {name} must be a number in (0, 1], got {quote(value)} ({type(value).__name__})")
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number) or not 0.0 < number <= 1.0:
        raise bad_request(f"{where}: {name} must be in (0, 1], got {quote(value)}")
    return number
