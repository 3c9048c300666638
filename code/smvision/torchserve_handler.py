"""TorchServe handler for the .mar files of `smvision archive mar`: a thin adapter.

Each request goes through the entry script's own model_fn / input_fn / predict_fn /
output_fn (code/inference.py), exactly as under our server and the SageMaker toolkit:
no request or model logic lives here. What this module adds is TorchServe's side:

- the .mar holds the archive's stage (manifest.json, payload, code/) at its root, and
  torch-model-archiver copies this file there as `torchserve_handler.py`; it puts that
  root's code/ on sys.path so `inference` and `smvision` import from the archive;
- TorchServe decodes application/json bodies by default (decode_input_request=true):
  such a body arrives as Python objects and is turned back into JSON text for input_fn
  (set decode_input_request=false in config.properties to skip that round trip);
- an InferenceError becomes that request's HTTP status through
  context.set_response_status, with our JSON error body {"error": ..., "status": N};
  anything else is a 500 with the exception's type only (the traceback goes to the log).
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

log = logging.getLogger("smvision")

#: where the entry script is: in a .mar this file sits at the model dir's root, next to
#: code/; imported as smvision.torchserve_handler it is code/smvision/, under code/
_HERE = Path(__file__).resolve().parent
for _code in (_HERE / "code", _HERE.parent):
    if (_code / "inference.py").is_file():
        if str(_code) not in sys.path:
            sys.path.insert(0, str(_code))
        break

import inference  # noqa: E402  (code/inference.py: the entry script every server runs)
from smvision.errors import InferenceError  # noqa: E402
from smvision.quoting import clean  # noqa: E402

JSON = "application/json"
OCTET_STREAM = "application/octet-stream"


class SmvisionHandler:
    """One per TorchServe worker: loads the archive once, then serves each request."""

    def __init__(self) -> None:
        self.model: Any = None
        self.initialized = False

    def initialize(self, context: Any) -> None:
        """Load the model from the extracted .mar (manifest checked, model warmed up)."""
        model_dir = context.system_properties["model_dir"]
        self.model = inference.model_fn(model_dir)
        self.initialized = True

    def handle(self, data: list[dict[str, Any]] | None, context: Any) -> list[bytes] | None:
        """One answer per request of TorchServe's batch, each with its own status and type."""
        if data is None:  # TorchServe's warm-up call of a function handler; nothing to do
            return None
        return [self._answer(index, row, context) for index, row in enumerate(data)]

    def _answer(self, index: int, row: dict[str, Any], context: Any) -> bytes:
        headers = _headers(context, index)
        content_type = headers.get("content-type") or OCTET_STREAM
        try:
            body = _body(row)
            request = inference.input_fn(body, content_type)
            prediction = inference.predict_fn(request, self.model)
            answer, answer_type = inference.output_fn(prediction, headers.get("accept"))
        except InferenceError as exc:
            log.info("%d: %s", exc.status_code, clean(exc.message))
            return _error(context, index, exc.status_code, exc.message)
        except Exception as exc:  # noqa: BLE001 - every error is answered; the log has the traceback
            log.exception("500 from the entry script")
            return _error(context, index, 500, f"internal error: {type(exc).__name__}; see the model log")
        context.set_response_content_type(index, answer_type)
        return answer


def _headers(context: Any, index: int) -> dict[str, str]:
    """The request's headers with lower-case names (TorchServe keeps the client's case)."""
    found = context.get_all_request_header(index) or {}
    return {str(name).lower(): value for name, value in found.items() if isinstance(value, str)}


def _body(row: dict[str, Any]) -> bytes | str:
    """The request body as bytes or text, as input_fn takes it."""
    body = row.get("body")
    if body is None:
        body = row.get("data")
    if body is None:
        return b""
    if isinstance(body, (bytes, str)):
        return body
    if isinstance(body, (bytearray, memoryview)):
        return bytes(body)
    # TorchServe parsed an application/json body already: give input_fn the JSON back
    return json.dumps(body)


def _error(context: Any, index: int, status: int, message: str) -> bytes:
    """Set the request's status and answer our JSON error body."""
    from http import HTTPStatus

    context.set_response_status(status, HTTPStatus(status).phrase, index)
    context.set_response_content_type(index, JSON)
    return json.dumps({"error": clean(message), "status": status}).encode("utf-8")


_service = SmvisionHandler()


def handle(data: list[dict[str, Any]] | None, context: Any) -> list[bytes] | None:
    """TorchServe's function entry point: load once, then answer the batch."""
    if not _service.initialized:
        _service.initialize(context)
    return _service.handle(data, context)
