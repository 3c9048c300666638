"""code/smvision/torchserve_handler.py without TorchServe: statuses, content types and
bodies it hands TorchServe's context (the TorchServe run itself: test_torchserve_mar.py)."""

from __future__ import annotations

import json
from typing import Any

from smvision.errors import bad_request
from smvision.records import Request
from smvision.settings import RuntimeSettings
from smvision.torchserve_handler import SmvisionHandler


class Context:
    """The parts of ts.context.Context the handler uses, recording what it sets."""

    def __init__(self, headers: list[dict[str, str]]) -> None:
        self.headers = headers
        self.status: dict[int, tuple[int, str]] = {}
        self.content_type: dict[int, str] = {}

    def get_all_request_header(self, idx: int) -> dict[str, Any]:
        return self.headers[idx]

    def set_response_status(self, code: int = 200, phrase: str = "", idx: int = 0) -> None:
        self.status[idx] = (code, phrase)

    def set_response_content_type(self, idx: int, value: str) -> None:
        self.content_type[idx] = value


class Recorder:
    """A model whose predict answers the records' parameters, or raises what it is given
    (served as the `sam` kind: JSON, JSON lines, CSV and images in; JSON, JSON lines out)."""

    kind = "sam"

    def __init__(self, error: Exception | None = None) -> None:
        self.error = error
        self.settings = RuntimeSettings()

    def predict(self, request: Request) -> list[dict[str, Any]]:
        if self.error is not None:
            raise self.error
        return [dict(record.params) for record in request.records]


def handler(model: Any) -> SmvisionHandler:
    served = SmvisionHandler()
    served.model, served.initialized = model, True
    return served


def test_each_request_of_a_batch_gets_its_own_answer_and_type():
    context = Context([{"Content-Type": "application/json", "Accept": "application/json"},
                       {"content-type": "application/jsonlines", "accept": "application/jsonlines"}])
    batch = [
        {"body": {"image": "aGk=", "points": [[1, 2]]}},  # TorchServe parsed the JSON already
        {"body": b'{"image": "aGk=", "n": 1}\n{"image": "aGk=", "n": 2}\n'},
    ]
    first, second = handler(Recorder()).handle(batch, context)
    assert json.loads(first) == {"points": [[1, 2]]}
    assert [json.loads(line) for line in second.decode().splitlines()] == [{"n": 1}, {"n": 2}]
    assert context.content_type == {0: "application/json", 1: "application/jsonlines"}
    assert context.status == {}  # TorchServe's default: 200


def test_an_inference_error_sets_its_status_and_our_error_body():
    context = Context([{"Content-Type": "application/json"}, {"Content-Type": "text/plain"}])
    batch = [{"body": b'{"image": "aGk="}'}, {"body": "hello"}]
    first, second = handler(Recorder(bad_request("points must be [[x, y], ...]"))).handle(batch, context)
    assert context.status[0] == (400, "Bad Request")
    assert json.loads(first) == {"error": "points must be [[x, y], ...]", "status": 400}
    assert context.status[1][0] == 415 and json.loads(second)["status"] == 415
    assert context.content_type == {0: "application/json", 1: "application/json"}


def test_an_unexpected_fault_is_a_500_without_its_details(caplog):
    context = Context([{"Content-Type": "application/json"}])
    [answer] = handler(Recorder(RuntimeError("secret path /opt/x"))).handle([{"body": b'{"image": "aGk="}'}], context)
    assert context.status[0][0] == 500
    body = json.loads(answer)
    assert body["status"] == 500 and "RuntimeError" in body["error"] and "secret" not in body["error"]
    assert "secret path" in caplog.text  # the log has it


def test_an_unsupported_accept_is_a_406():
    context = Context([{"Content-Type": "application/json", "Accept": "application/xml"}])
    [answer] = handler(Recorder()).handle([{"body": b'{"image": "aGk="}'}], context)
    assert context.status[0][0] == 406 and json.loads(answer)["status"] == 406
