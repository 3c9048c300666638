"""Error answers: what an exception raised while answering becomes.

Errors are JSON ``{"error": "<words>", "status": N}``; no traceback ever reaches a
client (the log has it), and the process keeps serving after each one. On
/endpoints/{name}/invocations an error is the sagemaker-runtime API's 424 ModelError
(model_error), which boto3 raises as ``ModelError``.
"""

from __future__ import annotations

import json
import logging

from starlette.requests import ClientDisconnect
from starlette.responses import Response

from smvision.container.body import BadRequest, TooLarge
from smvision.quoting import clean

log = logging.getLogger("smvision.container")

JSON = "application/json"


class StatusError(Exception):
    """An answer the server itself decides on (503 not ready, 504 timeout, ...)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status_code = status
        self.message = message


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


def error_response(status: int, message: str) -> Response:
    """The JSON error answer."""
    return Response(error_body(status, message), status, headers={"content-type": JSON})


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


def classify(exc: BaseException, limit: int | None) -> tuple[int, str]:
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
        if status >= 500 and status != 504 and not isinstance(exc, StatusError):
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
