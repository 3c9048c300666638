"""The handler threads: where model loading and inference run.

Model loading and inference run on this worker's own handler threads (by default one,
so model_fn and every request run on the same thread, one request at a time, as a
TorchServe worker does); the event loop stays free to answer /ping.

Each request is a Call, run inside its deadline scope (smvision.inflight), so the
deadline reaches the entry script: model kinds stop at their next check once it has
passed, and an abandoned request frees the worker within one batch of its 504.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from smvision import inflight

log = logging.getLogger("smvision.container")


class Call:
    """One /invocations request handed to a handler thread: its deadline (monotonic
    seconds), when it was queued and taken, and the Inflight the thread opened for it."""

    __slots__ = ("future", "deadline", "submitted", "started", "inflight")

    def __init__(self, future: asyncio.Future, deadline: float) -> None:
        self.future = future
        self.deadline = deadline
        self.submitted = time.monotonic()
        self.started: float | None = None
        self.inflight: inflight.Inflight | None = None

    def run(self, fn: Callable, *args: Any) -> Any:
        """On a handler thread: fn(*args) inside this request's deadline scope."""
        with inflight.request_scope(self.deadline - time.monotonic()) as flight:
            self.inflight = flight
            return fn(*args)

    def shorten(self, deadline: float) -> None:
        """Move the deadline up (never back), also where the entry script checks it."""
        self.deadline = min(self.deadline, deadline)
        flight = self.inflight
        if flight is not None and flight.deadline is not None:
            flight.deadline = min(flight.deadline, deadline)


class HandlerPool:
    """A fixed set of daemon threads running submitted calls in order.

    A result goes straight to an asyncio future through call_soon_threadsafe (cheaper
    than concurrent.futures plus wrap_future); a call whose future is already done
    (timed out or cancelled while queued) is skipped.  The threads are daemons: a call
    that overran its request timeout and is still running must not keep a SIGTERMed
    process alive after every answered request has been sent.
    """

    def __init__(self, threads: int, name: str = "handler") -> None:
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._running: dict[int, Call | None] = {}  # thread index -> what it runs now
        self._threads = [
            threading.Thread(target=self._work, args=(i,), name=f"{name}-{i}", daemon=True)
            for i in range(threads)
        ]
        for thread in self._threads:
            thread.start()

    def run(self, fn: Callable, *args: Any) -> None:
        """Queue fn(*args), result unwanted (it reports on its own)."""
        self._queue.put((None, None, fn, args))

    def submit(self, loop: asyncio.AbstractEventLoop, call: Call, fn: Callable, *args: Any
               ) -> None:
        """Queue fn(call, *args); call.future (of loop) gets its result."""
        self._queue.put((loop, call, fn, args))

    def busy(self) -> bool:
        """Whether any thread is inside a call (a request or the model load)."""
        return bool(self._running)

    def running(self) -> list[Call]:
        """The requests the threads are running now."""
        return [call for call in list(self._running.values()) if call is not None]

    def _work(self, index: int) -> None:
        get = self._queue.get
        while True:
            loop, call, fn, args = get()
            if call is not None:
                if call.future.done():
                    continue  # timed out or refused while queued: never run it
                call.started = time.monotonic()
                args = (call, *args)
            self._running[index] = call
            try:
                result = fn(*args)
            except BaseException as exc:  # noqa: BLE001 - handed to the waiting request
                if call is None:
                    log.error("unexpected error in a handler thread", exc_info=exc)
                else:
                    call_soon(loop, set_exception, call.future, exc)
                del exc
            else:
                if call is not None:
                    call_soon(loop, set_result, call.future, result)
                del result
            finally:
                self._running.pop(index, None)
                if call is not None and call.future.done():  # answered (504) before it ended
                    log.info("a request answered before it finished has stopped, %.1f s "
                             "past its deadline", time.monotonic() - call.deadline)
            del loop, call, fn, args


def call_soon(loop: asyncio.AbstractEventLoop, callback: Callable, *args: Any) -> None:
    """callback(*args) on loop, from any thread; nothing if the loop is closed."""
    try:
        loop.call_soon_threadsafe(callback, *args)
    except RuntimeError:  # the loop is closed: the process is exiting
        pass


def set_result(future: asyncio.Future, result: Any) -> None:
    """Resolve future with result, unless it is already done (timed out, refused)."""
    if not future.done():
        future.set_result(result)


def set_exception(future: asyncio.Future, exc: BaseException) -> None:
    """Fail future with exc, unless it is already done."""
    if not future.done():
        future.set_exception(exc)
