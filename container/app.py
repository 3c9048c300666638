"""The SageMaker hosting contract as a Starlette app.

GET  /ping                          200 once model_fn has returned; 503 before, and for
                                    good if it failed (the reason is in the log)
POST /invocations                   the entry script, in a handler thread
POST /endpoints/{name}/invocations  the same, answered the way the sagemaker-runtime
                                    InvokeEndpoint API answers (so boto3 pointed here
                                    with AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME works)
GET  /execution-parameters          what batch transform asks first

Errors are JSON ``{"error": "<words>", "status": N}``; no traceback ever reaches a
client (the log has it), and the process keeps serving after each one. An answer given
before the body was read (a 413 from Content-Length, a 503) first reads and discards the
rest of the body, within a bound (body.py), so that a client still sending it sees the
answer rather than a reset.

Model loading and inference run on this worker's own handler threads (by default one,
so model_fn and every request run on the same thread, one request at a time, as a
TorchServe worker does); the event loop stays free to answer /ping.

Each request carries its deadline into the entry script (smvision.inflight): model
kinds stop at their next check once it has passed, so an abandoned request frees the
worker within one batch of its 504. A worker whose handler threads are all held by
requests that overran their timeout by SMVISION_STUCK_AFTER_S answers /ping 503 (so
SageMaker replaces it) and new requests 503. Every /invocations answer carries a W3C
Server-Timing header: receive, queue, input, predict, output, the kind's own stages
(fetch, decode, forward, nms, ...) and total, in milliseconds.

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
import json
import logging
import os
import queue
import re
import signal
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from smvision import inflight
from smvision.container.body import (
    DISCARD_SECONDS,
    BadRequest,
    TooLarge,
    discard_bound,
    discard_rest,
    read_body,
)
from smvision.container.logs import MODEL_LOADED
from smvision.container.handler import Handler
from smvision.container.settings import ENV_DRAIN, ENV_STUCK_AFTER, Settings
from smvision.quoting import clean, quote
from smvision.settings import RuntimeSettings
from smvision.threads import use_threads

log = logging.getLogger("smvision.container")

JSON = "application/json"
VARIANT_HEADER = "x-Amzn-Invoked-Production-Variant"


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
                    _call_soon(loop, _set_exception, call.future, exc)
                del exc
            else:
                if call is not None:
                    _call_soon(loop, _set_result, call.future, result)
                del result
            finally:
                self._running.pop(index, None)
                if call is not None and call.future.done():  # answered (504) before it ended
                    log.info("a request answered before it finished has stopped, %.1f s "
                             "past its deadline", time.monotonic() - call.deadline)
            del loop, call, fn, args


def _call_soon(loop: asyncio.AbstractEventLoop, callback: Callable, *args: Any) -> None:
    try:
        loop.call_soon_threadsafe(callback, *args)
    except RuntimeError:  # the loop is closed: the process is exiting
        pass


def _set_result(future: asyncio.Future, result: Any) -> None:
    if not future.done():
        future.set_result(result)


def _set_exception(future: asyncio.Future, exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)


class _Timeout(Exception):
    pass


class _ShuttingDown(Exception):
    pass


class _ModelState:
    LOADING, READY, FAILED = "loading", "ready", "failed"

    def __init__(self) -> None:
        self.status = self.LOADING
        self.reason = ""


def error_status(exc: BaseException) -> tuple[int, str] | None:
    """(status, message) for InferenceError, the toolkit's BaseInferenceToolkitError, or
    any exception with an int ``status_code`` in 400-599 and a ``message``."""
    status = getattr(exc, "status_code", None)
    if isinstance(status, int) and not isinstance(status, bool) and 400 <= status <= 599:
        message = getattr(exc, "message", None)
        if message is not None:
            return status, str(message)
    return None


def error_body(status: int, message: str) -> bytes:
    """The JSON error body; the message is cut to a bounded length, control characters escaped."""
    return json.dumps({"error": clean(message), "status": status}).encode("utf-8")


def model_error(status: int, message: str) -> Response:
    """A container error as the sagemaker-runtime API reports it: 424 ModelError."""
    original = error_body(status, message).decode("utf-8")
    side = "client" if status < 500 else "server"
    body = {
        "ErrorCode": f"{side.upper()}_ERROR_FROM_MODEL",
        "OriginalStatusCode": status,
        "OriginalMessage": original,
        "Message": f"Received {side} error ({status}) from primary with message "
        f'"{original}". See the serving process\'s log for more information.',
        "LogStreamArn": "",
    }
    return Response(
        json.dumps(body).encode("utf-8"),
        status_code=424,
        headers={"content-type": JSON, "x-amzn-ErrorType": "ModelError"},
    )


def create_app(settings: Settings | None = None) -> Starlette:
    """The app for one worker process. With no settings, they are read from the
    environment (how uvicorn's worker processes get them)."""
    settings = settings if settings is not None else Settings.from_env()
    handler = Handler(settings.model_dir, settings.program, settings.default_accept)
    state = _ModelState()
    limit = settings.max_payload_bytes
    bound = discard_bound(limit)
    timeout = settings.timeout_s
    pool_box: list[HandlerPool] = []
    pending: set[Call] = set()  # requests waiting for an answer
    drain: dict[str, Any] = {"until": None}

    def load(loop: asyncio.AbstractEventLoop, loaded: asyncio.Future) -> None:
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
            state.reason = clean(reason, 500)
            state.status = state.FAILED
            log.error(
                "model_fn failed; /ping answers 503 until this process is restarted",
                exc_info=exc,
            )
        else:
            state.status = state.READY
            log.info("%s in %.2f s; /ping answers 200", MODEL_LOADED,
                     time.perf_counter() - started)
        _call_soon(loop, _set_result, loaded, None)

    def run_call(call: Call, body: bytes, content_type: str | None, accept: str | None
                 ) -> tuple[bytes, str]:
        """On a handler thread: the entry script, inside this request's deadline scope."""
        with inflight.request_scope(call.deadline - time.monotonic()) as flight:
            call.inflight = flight
            return handler.invoke(body, content_type, accept)

    def begin_drain(loop: asyncio.AbstractEventLoop, loaded: asyncio.Future) -> None:
        """SIGTERM: refuse what is queued, give what runs until the drain window ends."""
        if drain["until"] is not None:
            return
        until = drain["until"] = time.monotonic() + settings.drain_s
        queued = [call for call in pending if call.started is None]
        for call in queued:
            _set_exception(call.future, _ShuttingDown())
        running = [call for call in pending if call.started is not None]
        for call in running:
            call.shorten(until)
        log.info("shutting down: %d queued request(s) refused, %d running given up to %g s "
                 "(%s)", len(queued), len(running), settings.drain_s, ENV_DRAIN)
        _set_result(loaded, None)  # a worker still loading stops waiting for it

        def cut_off() -> None:
            for call in list(pending):
                _set_exception(call.future, _ShuttingDown())

        loop.call_later(settings.drain_s, cut_off)

    def stuck_for() -> float:
        """How long every handler thread has been held past a request's timeout (0 if not)."""
        running = pool_box[0].running() if pool_box else []
        if len(running) < settings.handler_threads:
            return 0.0
        now = time.monotonic()
        return max(0.0, min(now - call.deadline for call in running))

    def stuck_message() -> str | None:
        overrun = stuck_for()
        if overrun <= settings.stuck_after_s:
            return None
        return (f"this worker is stuck: a request has run {overrun:.0f} s past its "
                f"{timeout:g} s timeout ({ENV_STUCK_AFTER}={settings.stuck_after_s:g})")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        loop = asyncio.get_running_loop()
        pool = HandlerPool(settings.handler_threads)
        pool_box.append(pool)
        loaded = loop.create_future()
        pool.run(load, loop, loaded)  # first in the queue: runs before any request can
        restore = _on_shutdown_signal(
            lambda: loop.call_soon_threadsafe(begin_drain, loop, loaded))
        try:
            if settings.workers > 1:
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
                _flush_logs()
                os._exit(0)

    def not_ready() -> tuple[int, str]:
        if state.status == state.FAILED:
            return 503, f"the model failed to load ({state.reason}); see the server log"
        return 503, "the model is still loading"

    async def ping(request: Request) -> Response:
        if state.status == state.READY:
            stuck = stuck_message()
            if stuck is None:
                return Response(b'{"status": "Healthy"}', headers={"content-type": JSON})
            return Response(error_body(503, stuck), 503, headers={"content-type": JSON})
        status, message = not_ready()
        return Response(error_body(status, message), status, headers={"content-type": JSON})

    async def execution_parameters(request: Request) -> Response:
        return Response(
            json.dumps(settings.execution_parameters()).encode("utf-8"),
            headers={"content-type": JSON},
        )

    async def invoke(request: Request, runtime_api: bool) -> Response:
        started = time.monotonic()
        received = None
        call: Call | None = None
        body_read = False
        try:
            if state.status != state.READY:
                raise _Status(*not_ready())
            if drain["until"] is not None:
                raise _Status(503, "the server is shutting down; send the request again")
            stuck = stuck_message()
            if stuck is not None:
                raise _Status(503, stuck)
            body = await read_body(request, limit)
            body_read = True
            received = time.monotonic() - started
            headers = request.headers
            loop = asyncio.get_running_loop()
            call = Call(loop.create_future(), started + timeout)
            pending.add(call)
            pool_box[0].submit(loop, call, run_call, body, headers.get("content-type"),
                               headers.get("accept"))
            del body
            timer = loop.call_later(max(call.deadline - time.monotonic(), 0.001),
                                    _set_exception, call.future, _Timeout())
            try:
                payload, content_type = await call.future
            except _Timeout:
                raise _Status(
                    504,
                    f"the model did not answer within {timeout:g} s "
                    "(SAGEMAKER_MODEL_SERVER_TIMEOUT)",
                ) from None
            except _ShuttingDown:
                raise _Status(
                    503,
                    "the server is shutting down and the request did not finish in time "
                    f"({ENV_DRAIN}={settings.drain_s:g}); send the request again",
                ) from None
            finally:
                timer.cancel()
                pending.discard(call)
            response_headers = {"content-type": content_type}
            if runtime_api:
                response_headers[VARIANT_HEADER] = "AllTraffic"
            response = Response(payload, headers=response_headers)
        except BaseException as exc:  # noqa: BLE001 - every error is answered, never raised
            if isinstance(exc, asyncio.CancelledError):
                raise
            status, message = _classify(exc, limit)
            if runtime_api:
                response = model_error(status, message)
            else:
                response = Response(error_body(status, message), status,
                                    headers={"content-type": JSON})
            # Answered before the body was read: read the rest first (the client may still be
            # sending it, and would see a reset instead of this answer), within a bound and,
            # after SIGTERM, within the drain window.
            if not body_read:
                until = drain["until"]
                seconds = DISCARD_SECONDS if until is None else max(until - time.monotonic(), 0.0)
                received_before = exc.received if isinstance(exc, TooLarge) else 0
                if not await discard_rest(request, received_before, bound, seconds):
                    response.headers["connection"] = "close"
        response.headers["server-timing"] = server_timing(started, received, call)
        return response

    async def invocations(request: Request) -> Response:
        return await invoke(request, runtime_api=False)

    async def endpoint_invocations(request: Request) -> Response:
        return await invoke(request, runtime_api=True)

    async def not_found(request: Request, exc: Exception) -> Response:
        status = getattr(exc, "status_code", 404)
        message = "not found" if status == 404 else "method not allowed"
        message = f"{message}: {request.method} {quote(request.url.path)}"
        return Response(error_body(status, message), status, headers={"content-type": JSON})

    app = Starlette(
        routes=[
            Route("/ping", ping, methods=["GET"]),
            Route("/invocations", invocations, methods=["POST"]),
            Route("/endpoints/{name}/invocations", endpoint_invocations, methods=["POST"]),
            Route("/execution-parameters", execution_parameters, methods=["GET"]),
        ],
        exception_handlers={404: not_found, 405: not_found},
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.model_state = state
    return AccessLog(app)  # type: ignore[return-value]


_TOKEN = re.compile(r"[^A-Za-z0-9!#$%&'*+.^_`|~-]")


def server_timing(started: float, received: float | None, call: Call | None) -> str:
    """The W3C Server-Timing header value: each stage's milliseconds, then the total."""
    stages: list[tuple[str, float]] = []
    if received is not None:
        stages.append(("receive", received))
    if call is not None:
        if call.started is not None:
            stages.append(("queue", call.started - call.submitted))
        flight = call.inflight
        if flight is not None:
            try:
                stages.extend(dict(flight.stages).items())
            except RuntimeError:  # a handler thread past its deadline is adding one now
                pass
    stages.append(("total", time.monotonic() - started))
    return ", ".join(f"{_TOKEN.sub('_', name)};dur={seconds * 1000:.1f}" for name, seconds in stages)


def _on_shutdown_signal(callback: Callable[[], None]) -> Callable[[], None]:
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


def _flush_logs() -> None:
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


class _Status(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status_code = status
        self.message = message


def _classify(exc: BaseException, limit: int | None) -> tuple[int, str]:
    """(status, message) for an exception raised while answering; logs it."""
    if isinstance(exc, TooLarge):
        message = (
            f"the request body ({exc.size:,} bytes or more) is larger than the limit of "
            f"{limit:,} bytes (SAGEMAKER_MAX_PAYLOAD_IN_MB)"
        )
        log.warning("413: %s", message)
        return 413, message
    if isinstance(exc, BadRequest):
        log.warning("400: %s", clean(str(exc)))
        return 400, str(exc)
    if isinstance(exc, ClientDisconnect):
        log.warning("the client disconnected before sending the whole body")
        return 400, "the client disconnected before sending the whole body"
    known = error_status(exc)
    if known is not None:
        status, message = known
        if status >= 500 and status != 504 and not isinstance(exc, _Status):
            log.error("%d from the entry script: %s", status, clean(message), exc_info=exc)
        else:
            log.warning("%d: %s", status, clean(message))
        return status, message
    where = _where(exc)
    log.error("500: %s%s", type(exc).__name__, f" in {where}" if where else "", exc_info=exc)
    return 500, (
        f"internal error: {type(exc).__name__}{f' in {where}' if where else ''}; "
        "the server log has the details"
    )


def _where(exc: BaseException) -> str:
    """The innermost entry-script function the exception passed through, if any."""
    tb = exc.__traceback__
    name = ""
    while tb is not None:
        code = tb.tb_frame.f_code
        if code.co_name in ("model_fn", "input_fn", "predict_fn", "output_fn", "transform_fn"):
            name = code.co_name
        tb = tb.tb_next
    return name


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
