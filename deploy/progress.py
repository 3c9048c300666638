"""Progress bars on stderr (tqdm), switched off when asked or when stderr is not a terminal."""

from __future__ import annotations

import sys
from typing import Any, Callable

from tqdm import tqdm

#: where long-running deploy steps send a status line
Report = Callable[[str], None]


def report_to_stderr(line: str) -> None:
    """The default Report: the line on stderr, flushed."""
    print(line, file=sys.stderr, flush=True)


def progress_bar(total: float | None = None, *, enabled: bool = True, **options: Any) -> tqdm:
    """A tqdm bar on stderr; enabled=False (or a stderr that is not a TTY) draws nothing.

    Use it as a context manager; update(n) stays valid when it draws nothing.
    """
    disable = not enabled or not sys.stderr.isatty()
    return tqdm(total=total, disable=disable, file=sys.stderr, dynamic_ncols=True, **options)
