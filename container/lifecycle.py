"""A worker's life: loading the model, serving, stuck, draining after SIGTERM, exiting.

The model is loading until model_fn returns, then ready, or failed for good (the
reason, with the model dir's path left out, goes to /ping's 503 and the log).

A worker whose handler threads are all held by requests that overran their timeout by
SMVISION_STUCK_AFTER_S answers /ping 503 (so SageMaker replaces it) and new requests
503; it turns healthy again if the work ends.

SIGTERM: requests still queued are answered 503 at once, running ones get up to
SMVISION_DRAIN_S to finish (their deadline is moved up, so kinds stop in time) and are
answered 503 after that; then the process exits 0, without waiting for a handler thread
that is still inside the entry script.

With several workers (uvicorn processes sharing one listening socket), a worker starts
accepting connections only once its model has loaded, at start and after a restart:
until then the ready workers take every connection. A single worker listens at once
and answers /ping 503 while it loads.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from smvision.container.body import DISCARD_SECONDS
from smvision.container.handler import Handler
from smvision.container.logs import MODEL_LOADED
from smvision.container.pool import Call, HandlerPool, call_soon, set_exception, set_result
from smvision.container.settings import ENV_DRAIN, ENV_STUCK_AFTER, Settings
from smvision.quoting import clean
from smvision.settings import RuntimeSettings
from smvision.threads import use_threads

log = logging.getLogger("smvision.container")


class ShuttingDown(Exception):
    """Set on a request's future when the drain refuses it (queued) or cuts it off."""


class Lifecycle:
    """The model state (loading, ready or failed, and why), the drain after SIGTERM,
    and stuck detection, for one worker process.

    ``pending`` is the set of requests waiting for an answer (the app adds and removes
    them); the drain refuses or cuts off those still in it.
    """

    LOADING, READY, FAILED = "loading", "ready", "failed"

    def __init__(self, settings: Settings, pending: set[Call]) -> None:
        self.settings = settings
        self.status = self.LOADING
        self.reason = ""
        self.drain_until: float | None = None  # monotonic; set by SIGTERM
        self._pending = pending

    def load(self, handler: Handler, loop: asyncio.AbstractEventLoop,
             loaded: asyncio.Future) -> None:
        """On a handler thread: model_fn, then ready or failed; resolves ``loaded``."""
        settings = self.settings
        started = time.perf_counter()
        log.info("loading %s from %s", settings.program, settings.model_dir)
        runtime = RuntimeSettings.from_env()  # checked at start (serve.check)
        # before model_fn: torch reads OMP_NUM_THREADS when the entry script imports it;
        # after: torch.set_num_threads on this (the handler) thread, if it is imported now
        use_threads(runtime)
        try:
            handler.load()
            use_threads(runtime)
        except BaseException as exc:  # noqa: BLE001 - reported through /ping and the log
            reason = f"{type(exc).__name__}: {exc}"
            for path in {settings.model_dir, os.path.realpath(settings.model_dir)}:
                reason = reason.replace(path, "<model dir>")
            self.reason = clean(reason, 500)
            self.status = self.FAILED
            log.error(
                "model_fn failed; /ping answers 503 until this process is restarted",
                exc_info=exc,
            )
        else:
            self.status = self.READY
            log.info("%s in %.2f s; /ping answers 200", MODEL_LOADED,
                     time.perf_counter() - started)
        call_soon(loop, set_result, loaded, None)

    def not_ready(self) -> tuple[int, str]:
        """The 503 while the model loads, or after it failed to."""
        if self.status == self.FAILED:
            return 503, f"the model failed to load ({self.reason}); see the server log"
        return 503, "the model is still loading"

    def stuck(self, pool: HandlerPool | None) -> tuple[int, str] | None:
        """The 503 once every handler thread has been held past a request's timeout by
        more than SMVISION_STUCK_AFTER_S; None if not."""
        settings = self.settings
        running = pool.running() if pool is not None else []
        if len(running) < settings.handler_threads:
            return None
        now = time.monotonic()
        overrun = max(0.0, min(now - call.deadline for call in running))
        if overrun <= settings.stuck_after_s:
            return None
        return 503, (f"this worker is stuck: a request has run {overrun:.0f} s past its "
                     f"{settings.timeout_s:g} s timeout "
                     f"({ENV_STUCK_AFTER}={settings.stuck_after_s:g})")

    def health(self, pool: HandlerPool | None) -> tuple[int, str] | None:
        """Why /ping answers 503 (not ready, stuck); None when it answers 200."""
        if self.status != self.READY:
            return self.not_ready()
        return self.stuck(pool)

    def refusal(self, pool: HandlerPool | None) -> tuple[int, str] | None:
        """Why a new request is answered 503 before its body is read (not ready,
        shutting down, stuck); None when it is served."""
        if self.status != self.READY:
            return self.not_ready()
        if self.drain_until is not None:
            return 503, "the server is shutting down; send the request again"
        return self.stuck(pool)

    def discard_seconds(self) -> float:
        """How long the rest of a refused body may take to arrive: DISCARD_SECONDS, or,
        after SIGTERM, what is left of the drain window."""
        until = self.drain_until
        return DISCARD_SECONDS if until is None else max(until - time.monotonic(), 0.0)

    def begin_drain(self, loop: asyncio.AbstractEventLoop, loaded: asyncio.Future) -> None:
        """SIGTERM: refuse what is queued, give what runs until the drain window ends."""
        if self.drain_until is not None:
            return
        drain_s = self.settings.drain_s
        until = self.drain_until = time.monotonic() + drain_s
        pending = self._pending
        queued = [call for call in pending if call.started is None]
        for call in queued:
            set_exception(call.future, ShuttingDown())
        running = [call for call in pending if call.started is not None]
        for call in running:
            call.shorten(until)
        log.info("shutting down: %d queued request(s) refused, %d running given up to %g s "
                 "(%s)", len(queued), len(running), drain_s, ENV_DRAIN)
        set_result(loaded, None)  # a worker still loading stops waiting for it

        def cut_off() -> None:
            for call in list(pending):
                set_exception(call.future, ShuttingDown())

        loop.call_later(drain_s, cut_off)

    @contextlib.asynccontextmanager
    async def serving(self, pool: HandlerPool, handler: Handler) -> AsyncIterator[None]:
        """The app's lifespan: the model loads first on the pool, SIGTERM and SIGINT
        begin the drain; on the way out, the signal handlers are restored and a process
        whose handler thread is still busy exits 0 at once."""
        loop = asyncio.get_running_loop()
        loaded = loop.create_future()
        pool.run(self.load, handler, loop, loaded)  # first in the queue: before any request
        restore = on_shutdown_signal(
            lambda: loop.call_soon_threadsafe(self.begin_drain, loop, loaded))
        try:
            if self.settings.workers > 1:
                # uvicorn's workers share one listening socket, and a worker accepts from
                # it only once this returns: until its model is loaded, connections go to
                # the workers that are ready (or wait in the backlog for the first one).
                await loaded
            yield
        finally:
            restore()
            if pool.busy() and threading.current_thread() is threading.main_thread():
                # A handler thread is still inside the entry script (a request past its
                # drain window, or model_fn). Interpreter shutdown would wait for the image
                # threads or abort inside torch (SIGABRT); every answer has been sent.
                log.warning("exiting with a handler thread still busy")
                flush_logs()
                os._exit(0)


def on_shutdown_signal(callback: Callable[[], None]) -> Callable[[], None]:
    """Call callback (then the handler already there, uvicorn's) on SIGTERM and SIGINT;
    returns what undoes it. Only in the main thread, where signal handlers live."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = {}

    def handle(signum: int, frame: Any) -> None:
        callback()
        handler = previous.get(signum)
        if callable(handler):
            handler(signum, frame)

    for signum in (signal.SIGTERM, signal.SIGINT):
        previous[signum] = signal.signal(signum, handle)

    def restore() -> None:
        for signum, handler in previous.items():
            signal.signal(signum, handler)

    return restore


def flush_logs() -> None:
    """Flush the log handlers and the standard streams (best effort, on the way out)."""
    for handler in logging.getLogger().handlers + logging.getLogger("smvision").handlers:
        try:
            handler.flush()
        except Exception:  # noqa: BLE001 - best effort on the way out
            pass
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001
            pass
