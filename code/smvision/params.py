"""Checking the per-request parameters a model kind accepts."""

from __future__ import annotations

import math
import os
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


def env_unit_interval(name: str, default: float) -> float:
    """A (0, 1] setting from the environment; a bad value stops the model from loading."""
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a number; use a value in (0, 1]") from None
    if not math.isfinite(value) or not 0.0 < value <= 1.0:
        raise ValueError(f"{name}={raw!r} is outside (0, 1]")
    return value


def env_flag(name: str, default: bool = False, env: Mapping[str, str] | None = None) -> bool:
    """'1', 'true', 'yes', 'on' (any case) -> True; '0', 'false', 'no', 'off' -> False;
    unset or empty -> default. env defaults to os.environ."""
    raw = (os.environ if env is None else env).get(name)
    if raw is None or not raw.strip():
        return default
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{name}={raw!r} is not a boolean; use true or false")


def env_int(name: str, default: int, low: int, high: int, env: Mapping[str, str] | None = None) -> int:
    """An integer setting in [low, high] from the environment (env defaults to os.environ)."""
    raw = (os.environ if env is None else env).get(name)
    if raw is None or not raw.strip():
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not an integer") from None
    if not low <= value <= high:
        raise ValueError(f"{name}={value} is outside {low}..{high}")
    return value
