"""Hardening, in-process: deadlines reach S3, record caps, CSV parsing, quoting of
caller values, S3 refusals, manifest paths, the EfficientDet detection cap."""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest

from smvision import inflight
from smvision.errors import InferenceError
from smvision.records import parse_request


def error_of(fn, *args) -> InferenceError:
    with pytest.raises(InferenceError) as caught:
        fn(*args)
    return caught.value


# --------------------------------------------------------------------------- deadlines and S3


class Blackhole:
    """A TCP server on 127.0.0.1 that accepts connections and never answers."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.accepted: list[socket.socket] = []
        self._stop = False
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        self.sock.settimeout(0.2)
        while not self._stop:
            try:
                self.accepted.append(self.sock.accept()[0])
            except OSError:
                continue

    def close(self) -> None:
        self._stop = True
        self._thread.join(2)
        for conn in self.accepted:
            conn.close()
        self.sock.close()


def test_s3_that_never_answers_costs_no_more_than_the_request_deadline(monkeypatch):
    from smvision.s3 import S3Reader

    hole = Blackhole()
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", hole.url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    outcome: dict = {}

    def read() -> None:
        started = time.monotonic()
        with inflight.request_scope(2.0):
            try:
                S3Reader().read("bucket", "key.jpg")
            except InferenceError as exc:
                outcome["error"] = exc
        outcome["seconds"] = time.monotonic() - started

    try:
        thread = threading.Thread(target=read, daemon=True)
        thread.start()
        thread.join(15)  # botocore's defaults would hold it 60 s per attempt
        assert not thread.is_alive(), "the S3 read outlived its request by far"
    finally:
        hole.close()
    assert outcome["seconds"] < 3.0, outcome
    error = outcome["error"]
    assert error.status_code in (502, 504)
    assert "127.0.0.1" not in error.message and "http" not in error.message  # no endpoint URL


def test_s3_budget_fits_the_time_left():
    from smvision.s3 import UNBOUNDED_BUDGET, budget

    assert budget(None) == UNBOUNDED_BUDGET
    for remaining in (0.7, 1.0, 2.0, 3.9, 5.0, 14.0, 30.0, 60.0, 600.0):
        connect, read, attempts = budget(remaining)
        backoff = {1: 0.0, 2: 1.0, 3: 3.0}[attempts]
        assert attempts * (connect + read) + backoff <= max(remaining, 1.0), remaining
    assert budget(60.0)[2] == 3 and budget(2.0)[2] == 1


def test_a_request_past_its_deadline_reads_nothing_more():
    from smvision.images import ImageLoader
    from smvision.records import ImageSource, Record

    class CountingReader:
        reads = 0

        def read(self, bucket, key, request=None):
            CountingReader.reads += 1
            return b""

    loader = ImageLoader(reader=CountingReader())
    records = [Record(i, ImageSource(bucket="b", key=f"{i}.jpg"), {}) for i in range(20)]
    with inflight.request_scope(-1.0):
        error = error_of(lambda: list(loader.batches(records, 4)))
    assert error.status_code == 504 and "ran out of time" in error.message
    assert CountingReader.reads == 0


# --------------------------------------------------------------------------- records


@pytest.mark.parametrize("content_type, body", [
    ("text/csv", "\n".join(f"b/{i}.jpg" for i in range(4)) + "\nnot a reference\n"),
    ("application/jsonlines", "\n".join(json.dumps({"bucket": "b", "key": f"{i}"}) for i in range(4))),
    ("application/json", json.dumps([{"bucket": "b", "key": f"{i}"} for i in range(4)])),
])
def test_more_records_than_the_cap_is_413_naming_the_setting(content_type, body):
    # the cap is SMVISION_MAX_RECORDS, read once into the model's settings
    error = error_of(parse_request, body, content_type, 3)
    assert error.status_code == 413
    assert "SMVISION_MAX_RECORDS" in error.message and "3" in error.message
    if content_type == "text/csv":  # the cap was found before the bad 5th line was parsed
        assert error_of(parse_request, body, content_type, 5).status_code == 400
    else:
        assert len(parse_request(body, content_type, 4).records) == 4


def test_default_record_cap():
    body = "\n".join(f"b/{i}.jpg" for i in range(256))
    assert len(parse_request(body, "text/csv").records) == 256
    assert error_of(parse_request, body + "\nb/one-more.jpg", "text/csv").status_code == 413


def test_csv_quoted_field_with_a_comma_is_one_key():
    body = '"bucket/a,b.jpg",extra\n"s3://bucket/say ""hi"".png"\nbucket/plain.jpg,1,2\n'
    keys = [r.source.key for r in parse_request(body, "text/csv").records]
    assert keys == ["a,b.jpg", 'say "hi".png', "plain.jpg"]


def test_handler_refuses_transform_fn_beside_the_other_three(tmp_path):
    from smvision.container.handler import EntryScriptError, Handler

    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "both_fns.py").write_text(
        "def model_fn(d):\n    return 1\n"
        "def transform_fn(m, b, c, a):\n    return b\n"
        "def input_fn(b, c):\n    return b\n"
    )
    with pytest.raises(EntryScriptError, match="transform_fn and input_fn"):
        Handler(str(tmp_path), "both_fns.py").load()


def test_messages_quote_caller_values_and_stay_short():
    from smvision.params import check_known, unit_interval

    key = "pred\r\nINFO forged\x00" + "k" * 1_000_000
    error = error_of(check_known, {key: 1}, ["pred_threshold"], "record 0")
    assert "\n" not in error.message and "\x00" not in error.message and "\\r\\n" in error.message
    assert len(error.message) < 400 and "1,000,018 characters" in error.message
    error = error_of(unit_interval, "v" * 1_000_000, "pred_threshold", "record 0")
    assert len(error.message) < 400 and "pred_threshold" in error.message
    request = parse_request('{"bucket": "b", "key": "a\\r\\nb"}', "application/json")
    assert request.records[0].label() == "record 0 ('s3://b/a\\r\\nb')"
    assert request.records[0].source.describe() == "s3://b/a\r\nb"  # results keep the value as sent


class FixedS3Error:
    """An HTTP server on 127.0.0.1 answering every request with one S3 error document."""

    def __init__(self, status: int, code: str, message: str) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        body = f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>{code}</Code><Message>{message}</Message></Error>".encode()

        class Answer(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                self.send_response(status)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Answer)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize("status, code, message, expected", [
    (400, "KeyTooLongError", "Your key is too long", 400),
    (400, "InvalidRequest", "Bad request", 400),
    (405, "MethodNotAllowed", "The specified method is not allowed", 400),
    (500, "InternalError", "We encountered an internal error", 502),
])
def test_other_s3_refusals_are_the_callers_400_and_s3_faults_502(monkeypatch, status, code, message, expected):
    from smvision.s3 import S3Reader

    fake = FixedS3Error(status, code, message)
    for name, value in {"AWS_ENDPOINT_URL_S3": fake.url, "AWS_ACCESS_KEY_ID": "testing",
                        "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)
    try:
        with inflight.request_scope(5.0):
            error = error_of(S3Reader().read, "bucket", "k" * 2000)
    finally:
        fake.close()
    assert error.status_code == expected
    if expected == 400:
        assert code in error.message and message in error.message
    assert "127.0.0.1" not in error.message and len(error.message) < 500


@pytest.mark.parametrize("entry", ["../outside.txt", "/etc/hostname", "code/../../outside.txt", "link/outside.txt", "..\\\\outside.txt"])
def test_manifest_entries_outside_the_model_dir_are_refused_unread(tmp_path, monkeypatch, entry):
    from smvision import manifest as manifest_module
    from smvision.manifest import ArchiveError, Manifest, read_manifest

    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (tmp_path / "outside.txt").write_text("not yours")
    (model_dir / "link").symlink_to(tmp_path)
    (model_dir / "manifest.json").write_text(
        Manifest("efficientdet", {}, {}, False, files={entry: "0" * 64}).to_json())
    hashed = []
    monkeypatch.setattr(manifest_module, "sha256_of", lambda path: hashed.append(path) or "0" * 64)
    with pytest.raises(ArchiveError) as caught:
        read_manifest(model_dir)
    assert hashed == []  # nothing outside (or inside) was read
    assert "model dir" in str(caught.value) and "missing" not in str(caught.value)


TOKEN = "IQoJb3JpZ2luX2VjEJr//////////wEaCXVzLWVhc3QtMSJHMEUCIQD+tok/en=="


@pytest.mark.parametrize("text, secrets, kept", [
    # urllib3, a SigV2 presigned URL: the signature before the token, the line goes on after it
    ('http://s3:80 "GET /b/k?AWSAccessKeyId=ASIAKEY&Signature=Bj9q%2BNyt%3D&x-amz-security-token='
     'IQoJb3JpZ2luX2VjEJr%2F%2F%2F%2F%2F%2F%2F%2F%2F%2FwEaCXVzLWVhc3QtMSJHMEUCIQD%2Btok%2Fen%3D%3D'
     '&Expires=1796441340 HTTP/1.1" 200 2',
     ["ASIAKEY", "Bj9q%2BNyt%3D", "IQoJb3JpZ2lu"], ["Expires=1796441340 HTTP/1.1\" 200 2", "GET /b/k?"]),
    # SigV4 presigned URL, and a canonical request's query string
    ("/b/k?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=ASIAKEY%2F20261205%2Fus-east-1%2Fs3%2Faws4_request"
     "&X-Amz-Date=20261205T022950Z&X-Amz-Expires=3600&X-Amz-SignedHeaders=host&X-Amz-Security-Token="
     "IQoJb3JpZ2luX2Vj%2Btok%2Fen%3D%3D&X-Amz-Signature=62ebec26757fb90115b4f37671e9566fccd816697a87dcd08a112656104bf787",
     ["ASIAKEY", "IQoJb3JpZ2lu", "62ebec2675"], ["X-Amz-Date=20261205T022950Z", "X-Amz-SignedHeaders=host"]),
    # a presigned URL inside another URL's query: encoded twice
    ("next=http%3A%2F%2Fs3%2Fb%2Fk%3FX-Amz-Security-Token%3DIQoJb3JpZ2luX2Vj%252Btok%252Fen%253D%26"
     "X-Amz-Signature%3D62ebec26757fb901%26X-Amz-Date%3D20261205",
     ["IQoJb3JpZ2lu", "62ebec2675", "tok%252Fen"], ["X-Amz-Date%3D20261205"]),
    # botocore: the signed request's headers, the canonical request, the signature
    ("headers={'X-Amz-Date': b'20261205T022900Z', 'X-Amz-Security-Token': b'" + TOKEN + "', "
     "'Authorization': b'AWS4-HMAC-SHA256 Credential=ASIAKEY/20261205/us-east-1/s3/aws4_request, "
     "SignedHeaders=host, Signature=62ebec26757fb901'}",
     [TOKEN, "ASIAKEY", "62ebec2675"], ["'X-Amz-Date': b'20261205T022900Z'"]),
    ("CanonicalRequest:\nGET\n/b/k\n\nhost:s3\nx-amz-security-token:" + TOKEN + "\n\nhost;x-amz-security-token\nUNSIGNED",
     [TOKEN], ["host;x-amz-security-token\nUNSIGNED"]),
    ("Signature:\n62ebec26757fb90115b4f37671e9566fccd816697a87dcd08a112656104bf787", ["62ebec2675"], ["Signature:"]),
    # a presigned POST's fields, credentials as JSON and as STS's XML
    ("{'x-amz-credential': 'ASIAKEY/20261205/us-east-1/s3/aws4_request', 'x-amz-security-token': '" + TOKEN + "', "
     "'x-amz-signature': '98b7c05e4608dc59'}", ["ASIAKEY", TOKEN, "98b7c05e46"], ["'x-amz-signature': "]),
    ('{"AccessKeyId": "ASIAKEY", "SecretAccessKey": "wJalrXUtnFEMI", "SessionToken": "' + TOKEN + '"}',
     ["wJalrXUtnFEMI", TOKEN], ['"AccessKeyId": "ASIAKEY"']),
    ("b'<Credentials><SessionToken>" + TOKEN + "</SessionToken><SecretAccessKey>wJalrXUtnFEMI</SecretAccessKey>"
     "</Credentials>'", [TOKEN, "wJalrXUtnFEMI"], ["<Credentials>"]),
    # nothing secret: left alone
    ("Calculating signature using v4 auth. {'signature_version': 's3v4', 'signing_name': 's3'}", [],
     ["Calculating signature using v4 auth. {'signature_version': 's3v4', 'signing_name': 's3'}"]),
])
def test_log_lines_carry_no_credentials_raw_or_url_encoded(text, secrets, kept):
    import logging

    from smvision.container.logs import SafeFormatter, redact

    out = redact(text)
    assert not [secret for secret in secrets if secret in out], out
    assert all(part in out for part in kept), out
    assert redact(out) == out
    record = logging.LogRecord("botocore.endpoint", logging.DEBUG, __file__, 1, "%s", (text,), None)
    line = SafeFormatter("%(name)s: %(message)s").format(record)
    assert not [secret for secret in secrets if secret in line] and "\n" not in line


def request_with_body(headers: dict[str, str], pieces, pause: float = 0.0):
    """A starlette Request whose receive() hands out `pieces` (an iterable of bytes, the
    last one ending the body), `pause` seconds apart; and a list counting the calls."""
    import asyncio

    from starlette.requests import Request

    calls: list[int] = []
    source = iter(pieces)

    async def receive() -> dict:
        calls.append(1)
        await asyncio.sleep(pause)
        piece = next(source, None)
        if piece is None:
            return {"type": "http.request", "body": b"", "more_body": False}
        return {"type": "http.request", "body": piece, "more_body": True}

    scope = {"type": "http", "method": "POST", "path": "/invocations",
             "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()]}
    return Request(scope, receive), calls


def endless(piece: bytes):
    while True:
        yield piece


def test_a_refused_body_is_discarded_only_within_its_bound_in_bytes_and_time():
    import asyncio

    from smvision.container.body import DISCARD_ALLOWANCE, MB, discard_bound, discard_rest

    assert discard_bound(2 * MB) == 8 * MB + DISCARD_ALLOWANCE and discard_bound(None) == DISCARD_ALLOWANCE
    chunked = {"transfer-encoding": "chunked"}
    # the rest of the body arrives: read to its end, the connection stays usable
    request, calls = request_with_body(chunked, [b"x" * MB] * 5)
    assert asyncio.run(discard_rest(request, 3 * MB, bound=20 * MB)) and len(calls) == 6
    # an endless body: read up to the bound, then given up
    request, calls = request_with_body(chunked, endless(b"x" * MB))
    assert not asyncio.run(discard_rest(request, 0, bound=5 * MB)) and len(calls) == 6
    # a slow one: given up after the time allowed
    request, calls = request_with_body(chunked, endless(b"x"), pause=0.05)
    started = time.monotonic()
    assert not asyncio.run(discard_rest(request, 0, bound=5 * MB, seconds=0.3))
    assert 0.25 < time.monotonic() - started < 1.0
    # declared past the bound, or held back for a 100 Continue: nothing is read
    for headers in ({"content-length": str(6 * MB)}, {"content-length": "100", "expect": "100-continue"}):
        request, calls = request_with_body(headers, [b"x" * 100])
        assert not asyncio.run(discard_rest(request, 0, bound=5 * MB)) and calls == []
