"""The request in flight on this thread: its deadline and the time spent in each stage.

Our server opens a scope around every call into the entry script. Model kinds check the
deadline between batches and records (an abandoned request stops within one batch of
its 504) and time their stages (fetch, decode, forward, nms, ...), which the server
reports in the W3C Server-Timing header. Work handed to other threads carries the
Inflight object along explicitly. Under the AWS toolkit no scope is open: checks pass
and stage times are dropped.
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Iterator

from smvision.errors import InferenceError

_local = threading.local()


class Inflight:
    """One request's deadline (time.monotonic() seconds, or None) and stage times."""

    def __init__(self, deadline: float | None = None) -> None:
        self.deadline = deadline
        self.stages: dict[str, float] = {}  # stage name -> seconds, in first-seen order
        self._lock = threading.Lock()

    def remaining(self) -> float | None:
        """Seconds left before the deadline (may be negative); None without one."""
        return None if self.deadline is None else self.deadline - time.monotonic()

    def check(self, what: str) -> None:
        """Raise a 504 InferenceError if the deadline has passed; `what` says where."""
        left = self.remaining()
        if left is not None and left <= 0:
            raise InferenceError(504, f"the request ran out of time {what}; it was stopped there")

    def add(self, stage: str, seconds: float) -> None:
        """Add seconds to a stage (thread-safe: fetch threads report here too)."""
        with self._lock:
            self.stages[stage] = self.stages.get(stage, 0.0) + seconds


@contextlib.contextmanager
def request_scope(timeout_s: float | None) -> Iterator[Inflight]:
    """Open the request on this thread with a deadline timeout_s from now (None: none)."""
    inflight = Inflight(None if timeout_s is None else time.monotonic() + timeout_s)
    previous = getattr(_local, "inflight", None)
    _local.inflight = inflight
    try:
        yield inflight
    finally:
        _local.inflight = previous


def current() -> Inflight | None:
    """The request open on this thread, if any."""
    return getattr(_local, "inflight", None)


def check_deadline(what: str) -> None:
    """Stop the request open on this thread (504) if its deadline has passed."""
    inflight = current()
    if inflight is not None:
        inflight.check(what)


@contextlib.contextmanager
def stage(name: str, inflight: Inflight | None = None) -> Iterator[None]:
    """Time the enclosed block as stage `name` of the given (or this thread's) request."""
    target = inflight if inflight is not None else current()
    started = time.perf_counter()
    try:
        yield
    finally:
        if target is not None:
            target.add(name, time.perf_counter() - started)
