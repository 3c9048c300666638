"""A body over SAGEMAKER_MAX_PAYLOAD_IN_MB gets its 413, whatever the client: most clients
send the whole body before they read the answer, so the server reads and discards the
rest of it (up to a bound) before answering. A real server on 127.0.0.1 with a 2 MB limit;
bodies from requests and from a plain socket (keep-alive, Connection: close, HTTP/1.0,
chunked, slow)."""

from __future__ import annotations

import collections
import http.client
import json
import socket
import time

import pytest
import requests

from test_server import Serve, make_model_dir

LIMIT = 2 * 1024 * 1024
SIZES_MB = (3, 8, 30)
TRIES = 10
BODY = b"x" * (max(SIZES_MB) << 20)  # one buffer, sliced for every size


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("oversized")
    serve = Serve(make_model_dir(root, "echo.py"), root, env={"SAGEMAKER_MAX_PAYLOAD_IN_MB": "2"})
    try:
        yield serve.wait_ready()
    finally:
        assert serve.stop() == 0


def raw_post(port: int, size: int, headers: tuple[str, ...] = (), http_version: str = "1.1",
             chunked: bool = False, piece: int = 1 << 20, pause: float = 0.0,
             ) -> tuple[http.client.HTTPResponse, bytes]:
    """POST /invocations with `size` bytes over a plain socket, the whole body sent before
    the answer is read (as most HTTP clients do); the answer and its body. Raises OSError
    (a reset, a broken pipe) if the server drops the connection first."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    try:
        lines = [f"POST /invocations HTTP/{http_version}", "Host: 127.0.0.1",
                 "Content-Type: image/png", *headers,
                 "Transfer-Encoding: chunked" if chunked else f"Content-Length: {size}"]
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("ascii"))
        view = memoryview(BODY)
        for start in range(0, size, piece):
            part = view[start:min(start + piece, size)]
            sock.sendall(b"%x\r\n%s\r\n" % (len(part), part) if chunked else part)
            if pause:
                time.sleep(pause)
        if chunked:
            sock.sendall(b"0\r\n\r\n")
        answer = http.client.HTTPResponse(sock)
        answer.begin()
        return answer, answer.read()
    finally:
        sock.close()


def outcome(send, size: int) -> str:
    """'413 named' when the answer is the 413 JSON naming the limit; else what happened."""
    try:
        status, text = send(size)
    except (OSError, requests.ConnectionError) as exc:
        return type(exc).__name__ if isinstance(exc, OSError) else f"requests {exc.__class__.__name__}"
    if status != 413:
        return f"status {status}"
    body = json.loads(text)
    named = body["status"] == 413 and "2,097,152" in body["error"] and "SAGEMAKER_MAX_PAYLOAD_IN_MB" in body["error"]
    return "413 named" if named else f"413 {body}"


def via_requests(url: str, close: bool):
    def send(size: int) -> tuple[int, bytes]:
        headers = {"Content-Type": "image/png", **({"Connection": "close"} if close else {})}
        r = requests.post(url + "/invocations", data=BODY[:size], headers=headers, timeout=30)
        return r.status_code, r.content
    return send


def via_socket(port: int, **options):
    def send(size: int) -> tuple[int, bytes]:
        answer, body = raw_post(port, size, **options)
        return answer.status, body
    return send


CLIENTS = {
    "requests": lambda s: via_requests(s.url, close=False),
    "requests, Connection: close": lambda s: via_requests(s.url, close=True),
    "socket, keep-alive": lambda s: via_socket(s.port),
    "socket, Connection: close": lambda s: via_socket(s.port, headers=("Connection: close",)),
    "socket, HTTP/1.0": lambda s: via_socket(s.port, http_version="1.0"),
    "socket, chunked, Connection: close": lambda s: via_socket(s.port, headers=("Connection: close",), chunked=True),
    "socket, slow, Connection: close": lambda s: via_socket(s.port, headers=("Connection: close",),
                                                            piece=512 * 1024, pause=0.01),
}


@pytest.mark.parametrize("client", list(CLIENTS))
def test_every_body_over_the_limit_gets_its_413(server, client):
    send = CLIENTS[client](server)
    seen = {mb: collections.Counter(outcome(send, mb << 20) for _ in range(TRIES)) for mb in SIZES_MB}
    assert all(counts == {"413 named": TRIES} for counts in seen.values()), seen
    assert server.get("/ping").status_code == 200
    ok = server.post(data=BODY[:LIMIT], headers={"Content-Type": "image/png"})
    assert ok.status_code == 200 and ok.json()["length"] == LIMIT


def test_a_keep_alive_connection_serves_the_next_request_after_a_413(server):
    with requests.Session() as session:
        for _ in range(3):
            r = session.post(server.url + "/invocations", data=BODY[:3 << 20], headers={"Content-Type": "image/png"})
            assert r.status_code == 413 and r.headers.get("connection") != "close"
            ok = session.post(server.url + "/invocations", data=b"{}", headers={"Content-Type": "application/json"})
            assert ok.status_code == 200


def answer_to_headers_alone(port: int, *headers: str) -> tuple[http.client.HTTPResponse, bytes, bool]:
    """Send only the head of a POST; the answer, its body, and whether the server then closed."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        lines = ["POST /invocations HTTP/1.1", "Host: 127.0.0.1", "Content-Type: image/png", *headers]
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("ascii"))
        answer = http.client.HTTPResponse(sock)
        answer.begin()
        body = answer.read()
        sock.settimeout(5)
        try:
            closed = sock.recv(1) == b""
        except TimeoutError:
            closed = False
        return answer, body, closed


def test_a_body_declared_past_the_bound_is_refused_at_once_and_the_connection_closed(server):
    started = time.monotonic()
    answer, body, closed = answer_to_headers_alone(server.port, f"Content-Length: {500 << 20}")
    assert answer.status == 413 and "2,097,152" in body.decode()
    assert answer.getheader("connection") == "close" and closed
    assert time.monotonic() - started < 3  # not waiting for a body that is not coming
    assert server.get("/ping").status_code == 200


def test_expect_100_continue_gets_the_413_instead_of_a_100_and_no_body_is_awaited(server):
    answer, body, closed = answer_to_headers_alone(server.port, f"Content-Length: {8 << 20}", "Expect: 100-continue")
    assert answer.status == 413 and "2,097,152" in body.decode()
    assert answer.status == 413 and answer.getheader("connection") == "close" and closed
    assert server.get("/ping").status_code == 200


def test_a_chunked_body_past_the_bound_is_cut_off(server):
    """An endless chunked body: the server reads and discards up to the bound, then closes."""
    sent = 0
    piece = b"%x\r\n%s\r\n" % (1 << 20, BODY[:1 << 20])
    with socket.create_connection(("127.0.0.1", server.port), timeout=15) as sock:
        sock.sendall(b"POST /invocations HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n")
        with pytest.raises(OSError):
            while sent < 1024 << 20:  # 1 GB: far past any bound
                sock.sendall(piece)
                sent += 1 << 20
    assert sent < 200 << 20, f"{sent >> 20} MB accepted"
    assert server.get("/ping").status_code == 200


def test_an_answer_before_the_body_is_read_reaches_the_client_too(tmp_path):
    """A 503 while the model loads, to a client sending 8 MB with Connection: close."""
    serve = Serve(make_model_dir(tmp_path, "control.py"), tmp_path, env={"CONTROL_MODEL_FN_SLEEP": "30"})
    try:
        assert serve.wait_listening().status_code == 503
        seen = collections.Counter()
        for _ in range(TRIES):
            try:
                answer, body = raw_post(serve.port, 8 << 20, headers=("Connection: close",))
                seen[f"{answer.status} {'loading' in body.decode()}"] += 1
            except OSError as exc:
                seen[type(exc).__name__] += 1
        assert seen == {"503 True": TRIES}, seen
    finally:
        serve.stop()
