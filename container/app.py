"""The SageMaker hosting contract as a Starlette app.

GET  /ping                          200 once model_fn has returned; 503 before, and for
                                    good if it failed (the reason is in the log)
POST /invocations                   the entry script, in a handler thread
POST /endpoints/{name}/invocations  the same, answered the way the sagemaker-runtime
                                    InvokeEndpoint API answers (so boto3 pointed here
                                    with AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME works)
GET  /execution-parameters          what batch transform asks first

Errors are JSON ``{"error": "<words>", "status": N}``; no traceback ever reaches a
client (the log has it), and the process keeps serving after each one.

Model loading and inference run on this worker's own handler threads (by default one,
so model_fn and every request run on the same thread, one request at a time, as a
TorchServe worker does); the event loop stays free to answer /ping.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import queue
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from smvision.container.handler import Handler
from smvision.container.settings import Settings

log = logging.getLogger("smvision.container")

JSON = "application/json"
VARIANT_HEADER = "x-Amzn-Invoked-Production-Variant"


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
        self._threads = [
            threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True)
            for i in range(threads)
        ]
        for thread in self._threads:
            thread.start()

    def run(self, fn: Callable, *args: Any) -> None:
        """Queue fn(*args), result unwanted (it reports on its own)."""
        self._queue.put((None, None, fn, args))

    def submit(self, loop: asyncio.AbstractEventLoop, fn: Callable, *args: Any
               ) -> asyncio.Future:
        """Queue fn(*args); the returned future (of loop) gets its result."""
        future = loop.create_future()
        self._queue.put((loop, future, fn, args))
        return future

    def _work(self) -> None:
        get = self._queue.get
        while True:
            loop, future, fn, args = get()
            if future is not None and future.done():
                continue  # timed out or cancelled while queued: never run it
            try:
                result = fn(*args)
            except BaseException as exc:  # noqa: BLE001 - handed to the waiting request
                if future is None:
                    log.error("unexpected error in a handler thread", exc_info=exc)
                else:
                    _call_soon(loop, _set_exception, future, exc)
                del exc
            else:
                if future is not None:
                    _call_soon(loop, _set_result, future, result)
                del result
            del loop, future, fn, args


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
    return json.dumps({"error": message, "status": status}).encode("utf-8")


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


class _TooLarge(Exception):
    pass


async def read_body(request: Request, limit: int | None) -> bytes:
    """The whole request body, refusing (413) one over ``limit`` bytes: a declared
    Content-Length first, then by counting while a chunked body arrives."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            length = int(declared)
        except ValueError:
            length = -1
        if length < 0:
            raise _BadRequest(f"invalid Content-Length {declared!r}")
        if limit is not None and length > limit:
            raise _TooLarge(length)
    receive = request.receive
    chunks: list[bytes] = []
    total = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        chunk = message.get("body", b"")
        if chunk:
            total += len(chunk)
            if limit is not None and total > limit:
                raise _TooLarge(total)
            chunks.append(chunk)
        if not message.get("more_body", False):
            break
    if len(chunks) == 1:
        return chunks[0]
    return b"".join(chunks)


class _BadRequest(Exception):
    pass


def create_app(settings: Settings | None = None) -> Starlette:
    """The app for one worker process. With no settings, they are read from the
    environment (how uvicorn's worker processes get them)."""
    settings = settings if settings is not None else Settings.from_env()
    handler = Handler(settings.model_dir, settings.program, settings.default_accept)
    state = _ModelState()
    limit = settings.max_payload_bytes
    timeout = settings.timeout_s
    pool_box: list[HandlerPool] = []

    def load() -> None:
        started = time.perf_counter()
        log.info("loading %s from %s", settings.program, settings.model_dir)
        try:
            handler.load()
        except BaseException as exc:  # noqa: BLE001 - reported through /ping and the log
            state.reason = f"{type(exc).__name__}: {exc}"
            state.status = state.FAILED
            log.error(
                "model_fn failed; /ping answers 503 until this process is restarted",
                exc_info=exc,
            )
            return
        state.status = state.READY
        log.info("model loaded in %.2f s; /ping answers 200", time.perf_counter() - started)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        pool = HandlerPool(settings.handler_threads)
        pool_box.append(pool)
        pool.run(load)  # first in the queue: runs before any request can
        yield

    def not_ready() -> tuple[int, str]:
        if state.status == state.FAILED:
            return 503, f"the model failed to load ({state.reason}); see the server log"
        return 503, "the model is still loading"

    async def ping(request: Request) -> Response:
        if state.status == state.READY:
            return Response(b'{"status": "Healthy"}', headers={"content-type": JSON})
        status, message = not_ready()
        return Response(error_body(status, message), status, headers={"content-type": JSON})

    async def execution_parameters(request: Request) -> Response:
        return Response(
            json.dumps(settings.execution_parameters()).encode("utf-8"),
            headers={"content-type": JSON},
        )

    async def invoke(request: Request, runtime_api: bool) -> Response:
        started = time.monotonic()
        try:
            if state.status != state.READY:
                raise _Status(*not_ready())
            body = await read_body(request, limit)
            headers = request.headers
            loop = asyncio.get_running_loop()
            future = pool_box[0].submit(
                loop, handler.invoke, body, headers.get("content-type"), headers.get("accept")
            )
            del body
            remaining = max(timeout - (time.monotonic() - started), 0.001)
            timer = loop.call_later(remaining, _set_exception, future, _Timeout())
            try:
                payload, content_type = await future
            except _Timeout:
                raise _Status(
                    504,
                    f"the model did not answer within {timeout:g} s "
                    "(SAGEMAKER_MODEL_SERVER_TIMEOUT)",
                ) from None
            finally:
                timer.cancel()
            response_headers = {"content-type": content_type}
            if runtime_api:
                response_headers[VARIANT_HEADER] = "AllTraffic"
            return Response(payload, headers=response_headers)
        except BaseException as exc:  # noqa: BLE001 - every error is answered, never raised
            if isinstance(exc, asyncio.CancelledError):
                raise
            status, message = _classify(exc, limit)
            if runtime_api:
                return model_error(status, message)
            return Response(error_body(status, message), status, headers={"content-type": JSON})

    async def invocations(request: Request) -> Response:
        return await invoke(request, runtime_api=False)

    async def endpoint_invocations(request: Request) -> Response:
        return await invoke(request, runtime_api=True)

    async def not_found(request: Request, exc: Exception) -> Response:
        status = getattr(exc, "status_code", 404)
        message = "not found" if status == 404 else "method not allowed"
        message = f"{message}: {request.method} {request.url.path}"
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


class _Status(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status_code = status
        self.message = message


def _classify(exc: BaseException, limit: int | None) -> tuple[int, str]:
    """(status, message) for an exception raised while answering; logs it."""
    if isinstance(exc, _TooLarge):
        message = (
            f"the request body ({exc.args[0]:,} bytes or more) is larger than the limit of "
            f"{limit:,} bytes (SAGEMAKER_MAX_PAYLOAD_IN_MB)"
        )
        log.warning("413: %s", message)
        return 413, message
    if isinstance(exc, _BadRequest):
        log.warning("400: %s", exc)
        return 400, str(exc)
    if isinstance(exc, ClientDisconnect):
        log.warning("the client disconnected before sending the whole body")
        return 400, "the client disconnected before sending the whole body"
    known = error_status(exc)
    if known is not None:
        status, message = known
        if status >= 500 and not isinstance(exc, _Status):
            log.error("%d from the entry script: %s", status, message, exc_info=exc)
        else:
            log.warning("%d: %s", status, message)
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
            self._line(scope["method"], scope["path"], status, started)
