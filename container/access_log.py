"""The access log: one line per HTTP request, written by an ASGI wrapper around the app
(uvicorn's own access log is off: see serve.log_config)."""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable

from starlette.applications import Starlette

from smvision.quoting import clean

log = logging.getLogger("smvision.container")


class AccessLog:
    """One line per request on stderr: method, path, status, milliseconds.

    Written straight to sys.stderr in the same shape as the log's other lines (see
    serve.log_config) rather than through logging, which costs ten times as much per
    line; lines are skipped when the smvision.container logger is above INFO.
    """

    def __init__(self, app: Starlette) -> None:
        self.app = app
        self.state = app.state
        self._pid = os.getpid()
        self._second = -1
        self._stamp = ""

    def _line(self, method: str, path: str, status: int, started: float) -> None:
        if not log.isEnabledFor(logging.INFO):
            return
        ms = (time.perf_counter() - started) * 1000.0
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
        try:
            sys.stderr.write(
                f"{self._stamp},{int((now - second) * 1000):03d} [{self._pid}] INFO "
                f"smvision.container: {method} {path} {status} {ms:.2f} ms\n"
            )
        except (OSError, ValueError, AttributeError):  # stderr closed or absent
            pass

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 0

        async def send_and_note(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            self._line(scope["method"], clean(scope["path"], 200), status, started)
