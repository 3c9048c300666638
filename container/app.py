"""The SageMaker hosting contract as a Starlette app.

GET  /ping                          200 once model_fn has returned; 503 before, and for
                                    good if it failed (the reason is in the log)
POST /invocations                   the entry script, in a handler thread
POST /endpoints/{name}/invocations  the same, answered the way the sagemaker-runtime
                                    InvokeEndpoint API answers (so boto3 pointed here
                                    with AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME works)
GET  /execution-parameters          what batch transform asks first

Service wires the pieces, one module each: the handler threads (pool.py), error
answers (errors.py), request bodies (body.py), the worker's life: loading, stuck,
draining after SIGTERM (lifecycle.py), the Server-Timing header (timing.py) and the
access log (access_log.py). An answer given before the body was read (a 413 from
Content-Length, a 503) first reads and discards the rest of the body, within a bound
(body.py), so that a client still sending it sees the answer rather than a reset.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from smvision.container.access_log import AccessLog
from smvision.container.body import TooLarge, discard_bound, discard_rest, read_body
from smvision.container.errors import JSON, StatusError, classify, error_response, model_error
from smvision.container.handler import Handler
from smvision.container.lifecycle import Lifecycle, ShuttingDown
from smvision.container.pool import Call, HandlerPool, set_exception
from smvision.container.settings import ENV_DRAIN, Settings
from smvision.container.timing import server_timing
from smvision.quoting import quote

VARIANT_HEADER = "x-Amzn-Invoked-Production-Variant"
HEALTHY = b'{"status": "Healthy"}'


class _Timeout(Exception):
    """Set on a request's future when SAGEMAKER_MODEL_SERVER_TIMEOUT has passed (a 504)."""


class Service:
    """One worker process's server: its settings, the entry script's Handler, the
    handler threads (created by the lifespan), the requests waiting for an answer, and
    the Lifecycle; a method per route."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.handler = Handler(settings.model_dir, settings.program, settings.default_accept)
        self.limit = settings.max_payload_bytes
        self.bound = discard_bound(self.limit)
        self.timeout = settings.timeout_s
        self.pool: HandlerPool | None = None
        self.pending: set[Call] = set()  # requests waiting for an answer
        self.lifecycle = Lifecycle(settings, self.pending)

    def asgi(self) -> Starlette:
        """The ASGI app: the routes, the lifespan, and the access log around them."""
        app = Starlette(
            routes=[
                Route("/ping", self.ping, methods=["GET"]),
                Route("/invocations", self.invocations, methods=["POST"]),
                Route("/endpoints/{name}/invocations", self.endpoint_invocations,
                      methods=["POST"]),
                Route("/execution-parameters", self.execution_parameters, methods=["GET"]),
            ],
            exception_handlers={404: self.not_found, 405: self.not_found},
            lifespan=self.lifespan,
        )
        app.state.settings = self.settings
        app.state.model_state = self.lifecycle
        return AccessLog(app)  # type: ignore[return-value]

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        """Start the handler threads (the model loads first on them) and live the
        worker's life (Lifecycle.serving)."""
        self.pool = pool = HandlerPool(self.settings.handler_threads)
        async with self.lifecycle.serving(pool, self.handler):
            yield

    async def ping(self, request: Request) -> Response:
        """GET /ping: 200 once the model is loaded, unless the worker is stuck."""
        unhealthy = self.lifecycle.health(self.pool)
        if unhealthy is None:
            return Response(HEALTHY, headers={"content-type": JSON})
        return error_response(*unhealthy)

    async def execution_parameters(self, request: Request) -> Response:
        """GET /execution-parameters."""
        return Response(
            json.dumps(self.settings.execution_parameters()).encode("utf-8"),
            headers={"content-type": JSON},
        )

    async def invocations(self, request: Request) -> Response:
        """POST /invocations."""
        return await self.invoke(request, runtime_api=False)

    async def endpoint_invocations(self, request: Request) -> Response:
        """POST /endpoints/{name}/invocations, answered as the sagemaker-runtime API."""
        return await self.invoke(request, runtime_api=True)

    async def invoke(self, request: Request, runtime_api: bool) -> Response:
        """One request through the entry script, every error answered (never raised),
        with its Server-Timing header."""
        started = time.monotonic()
        received = None
        call: Call | None = None
        body_read = False
        try:
            refused = self.lifecycle.refusal(self.pool)
            if refused is not None:
                raise StatusError(*refused)
            body = await read_body(request, self.limit)
            body_read = True
            received = time.monotonic() - started
            headers = request.headers
            loop = asyncio.get_running_loop()
            call = Call(loop.create_future(), started + self.timeout)
            self.pending.add(call)
            self.pool.submit(  # type: ignore[union-attr] - there once the model is ready
                loop, call, Call.run, self.handler.invoke, body,
                headers.get("content-type"), headers.get("accept"))
            del body
            timer = loop.call_later(max(call.deadline - time.monotonic(), 0.001),
                                    set_exception, call.future, _Timeout())
            try:
                payload, content_type = await call.future
            except _Timeout:
                raise StatusError(
                    504,
                    f"the model did not answer within {self.timeout:g} s "
                    "(SAGEMAKER_MODEL_SERVER_TIMEOUT)",
                ) from None
            except ShuttingDown:
                raise StatusError(
                    503,
                    "the server is shutting down and the request did not finish in time "
                    f"({ENV_DRAIN}={self.settings.drain_s:g}); send the request again",
                ) from None
            finally:
                timer.cancel()
                self.pending.discard(call)
            response_headers = {"content-type": content_type}
            if runtime_api:
                response_headers[VARIANT_HEADER] = "AllTraffic"
            response = Response(payload, headers=response_headers)
        except BaseException as exc:  # noqa: BLE001 - every error is answered, never raised
            if isinstance(exc, asyncio.CancelledError):
                raise
            status, message = classify(exc, self.limit)
            if runtime_api:
                response = model_error(status, message)
            else:
                response = error_response(status, message)
            # Answered before the body was read: read the rest first (the client may still be
            # sending it, and would see a reset instead of this answer), within a bound and,
            # after SIGTERM, within the drain window.
            if not body_read:
                received_before = exc.received if isinstance(exc, TooLarge) else 0
                if not await discard_rest(request, received_before, self.bound,
                                          self.lifecycle.discard_seconds()):
                    response.headers["connection"] = "close"
        response.headers["server-timing"] = server_timing(started, received, call)
        return response

    async def not_found(self, request: Request, exc: Exception) -> Response:
        """404 and 405, as JSON errors."""
        status = getattr(exc, "status_code", 404)
        message = "not found" if status == 404 else "method not allowed"
        return error_response(status, f"{message}: {request.method} {quote(request.url.path)}")


def create_app(settings: Settings | None = None) -> Starlette:
    """The app for one worker process. With no settings, they are read from the
    environment (how uvicorn's worker processes get them)."""
    return Service(settings if settings is not None else Settings.from_env()).asgi()
