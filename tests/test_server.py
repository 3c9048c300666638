"""The serving process (container/) as SageMaker and boto3 see it: a real subprocess on
127.0.0.1 running small entry scripts from tests/fixtures/server_entries/."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests

from smvision.container.settings import Settings, SettingsError
from smvision.deploy.server_process import ServerProcess, free_port, smvision_serve, wait_until

ENTRIES = Path(__file__).parent / "fixtures" / "server_entries"
PYTHON = sys.executable


# --------------------------------------------------------------------------- plumbing


def make_model_dir(root: Path, entry: str, read_only: bool = True) -> Path:
    """<root>/model with code/inference.py = the fixture entry script, read-only as
    SageMaker mounts /opt/ml/model."""
    model_dir = root / "model"
    (model_dir / "code").mkdir(parents=True)
    shutil.copy(ENTRIES / entry, model_dir / "code" / "inference.py")
    (model_dir / "weights.txt").write_text("w-123\n")
    if read_only:
        for path in sorted(model_dir.rglob("*"), reverse=True):
            path.chmod(0o555 if path.is_dir() else 0o444)
        model_dir.chmod(0o555)
    return model_dir


def snapshot(directory: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(directory)): (p.stat().st_mtime_ns, p.stat().st_size)
        for p in directory.rglob("*")
    }


class Serve(ServerProcess):
    """`python -m smvision.container.serve [args]` on 127.0.0.1, started at once, its output
    in log_dir; get() and post() send it requests."""

    def __init__(self, model_dir: Path, log_dir: Path, env: dict[str, str] | None = None,
                 args: list[str] | None = None) -> None:
        port = free_port()
        super().__init__(
            [PYTHON, "-m", "smvision.container.serve", *(args or []),
             "--model-dir", str(model_dir), "--port", str(port)],
            f"http://127.0.0.1:{port}", name="serve",
            env={**os.environ, "SMVISION_BIND_HOST": "127.0.0.1", **(env or {})},
            log_path=log_dir / f"serve-{port}.log", ready_timeout_s=20, poll_s=0.05,
        )
        self.start()

    def get(self, path: str, **kw) -> requests.Response:
        return requests.get(self.url + path, timeout=kw.pop("timeout", 10), **kw)

    def post(self, path: str = "/invocations", **kw) -> requests.Response:
        return requests.post(self.url + path, timeout=kw.pop("timeout", 10), **kw)

    def wait_listening(self, timeout: float = 20) -> requests.Response:
        """The first answer to /ping, whatever its status."""
        return self.wait_until(lambda: [self.get("/ping", timeout=2)], timeout, "/ping to answer")[0]


def assert_error(response: requests.Response, status: int, *words: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"error", "status"} and body["status"] == status, body
    assert "Traceback" not in response.text and 'File "' not in response.text
    for word in words:
        assert word in body["error"], body
    return body


def runtime_client(monkeypatch, url: str):
    """boto3's sagemaker-runtime client pointed at the server the way users do it."""
    import boto3
    from botocore.config import Config

    monkeypatch.setenv("AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME", url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    return boto3.client(
        "sagemaker-runtime", region_name="us-east-1",
        config=Config(retries={"max_attempts": 1}, read_timeout=10),
    )


@pytest.fixture(scope="module")
def echo_dir(tmp_path_factory) -> Path:
    return make_model_dir(tmp_path_factory.mktemp("echo"), "echo.py")


@pytest.fixture(scope="module")
def echo_before(echo_dir) -> dict:
    return snapshot(echo_dir)


@pytest.fixture(scope="module")
def echo(echo_dir, echo_before, tmp_path_factory):
    server = Serve(
        echo_dir,
        tmp_path_factory.mktemp("echo-log"),
        env={
            "SAGEMAKER_MAX_PAYLOAD_IN_MB": "1",
            "SAGEMAKER_BATCH": "true",
            "SAGEMAKER_BATCH_STRATEGY": "SingleRecord",
            "SAGEMAKER_MAX_CONCURRENT_TRANSFORMS": "3",
        },
        args=["serve"],  # as `docker run IMAGE serve` passes it
    )
    try:
        yield server.wait_ready()
    finally:
        assert server.stop() == 0


@pytest.fixture(scope="module")
def control(tmp_path_factory):
    model_dir = make_model_dir(tmp_path_factory.mktemp("control"), "control.py")
    server = Serve(model_dir, tmp_path_factory.mktemp("control-log"),
                   env={"SAGEMAKER_MODEL_SERVER_TIMEOUT": "1"})
    try:
        yield server.wait_ready()
    finally:
        assert server.stop() == 0


# --------------------------------------------------------------------------- settings


def test_settings_defaults_and_env():
    s = Settings.from_env({})
    assert (s.model_dir, s.program, s.port, s.workers, s.timeout_s) == (
        "/opt/ml/model", "inference.py", 8080, 1, 60.0)
    assert s.max_payload_bytes == 6_291_456 and s.default_accept == "application/json"
    assert s.host == "0.0.0.0" and s.batch is False
    assert s.execution_parameters() == {
        "MaxConcurrentTransforms": 1, "BatchStrategy": "MULTI_RECORD", "MaxPayloadInMB": 6}
    s = Settings.from_env({
        "SAGEMAKER_BASE_DIR": "/x", "SAGEMAKER_PROGRAM": "serve_me.py",
        "SAGEMAKER_MODEL_SERVER_WORKERS": "4", "SAGEMAKER_MAX_PAYLOAD_IN_MB": "0",
        "SAGEMAKER_BATCH_STRATEGY": "SINGLE_RECORD", "SAGEMAKER_BATCH": "True",
    })
    assert s.model_dir == "/x/model" and s.module_name == "serve_me"
    assert s.max_payload_bytes is None and s.batch is True
    assert s.execution_parameters()["MaxConcurrentTransforms"] == 4
    assert s.execution_parameters()["BatchStrategy"] == "SINGLE_RECORD"
    assert Settings.from_env({"SAGEMAKER_BASE_DIR": "/x", "SMVISION_MODEL_DIR": "/m"}).model_dir == "/m"


@pytest.mark.parametrize(
    "name, value",
    [
        ("SAGEMAKER_BIND_TO_PORT", "http"),
        ("SAGEMAKER_BIND_TO_PORT", "70000"),
        ("SAGEMAKER_MODEL_SERVER_WORKERS", "0"),
        ("SAGEMAKER_MODEL_SERVER_TIMEOUT", "-5"),
        ("SAGEMAKER_MAX_PAYLOAD_IN_MB", "six"),
        ("SAGEMAKER_BATCH", "maybe"),
        ("SAGEMAKER_BATCH_STRATEGY", "Everything"),
        ("SAGEMAKER_PROGRAM", "../evil.py"),
    ],
)
def test_settings_bad_values_name_the_variable(name, value):
    with pytest.raises(SettingsError, match=name):
        Settings.from_env({name: value})


def test_bad_settings_stop_the_process_at_start(tmp_path):
    model_dir = make_model_dir(tmp_path, "echo.py", read_only=False)
    cmd = [PYTHON, "-m", "smvision.container.serve", "--model-dir", str(model_dir)]
    bad = subprocess.run(cmd, env={**os.environ, "SAGEMAKER_MODEL_SERVER_WORKERS": "two"},
                         capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and "SAGEMAKER_MODEL_SERVER_WORKERS='two'" in bad.stderr
    missing = subprocess.run(
        [PYTHON, "-m", "smvision.container.serve", "--model-dir", str(tmp_path / "nope")],
        capture_output=True, text=True, timeout=30)
    assert missing.returncode == 2 and "not a directory" in missing.stderr
    no_script = subprocess.run(cmd, env={**os.environ, "SAGEMAKER_PROGRAM": "other.py"},
                               capture_output=True, text=True, timeout=30)
    assert no_script.returncode == 2 and "other.py" in no_script.stderr


# --------------------------------------------------------------------------- echo server


@pytest.mark.parametrize(
    "content_type, body",
    [
        ("application/json", b'{"bucket": "b", "key": "k.jpg"}'),
        ("text/csv", b"b/one.jpg\ns3://b/two.png\n"),
        ("application/jsonlines", b'{"s3_uri": "s3://b/1.jpg"}\n{"s3_uri": "s3://b/2.jpg"}\n'),
        ("image/png", bytes(range(256)) * 40),
        ("application/x-npy", b"\x93NUMPY\x01\x00" + os.urandom(5000)),
    ],
)
def test_body_and_content_type_round_trip(echo, content_type, body):
    r = echo.post(data=body, headers={"Content-Type": content_type, "Accept": "application/x-echo"})
    assert r.status_code == 200, r.text
    assert r.content == body
    assert r.headers["content-type"] == content_type


@pytest.mark.parametrize(
    "content_type, kind",
    [
        ("application/json", "str"),
        ("application/json; charset=utf-8", "str"),
        ("text/csv", "str"),
        ("application/jsonlines", "str"),
        ("image/jpeg", "bytes"),
        ("application/x-image", "bytes"),
        ("application/octet-stream", "bytes"),
        (None, "bytes"),
    ],
)
def test_text_types_arrive_as_str_others_as_bytes(echo, content_type, kind):
    headers = {"Content-Type": content_type} if content_type else {}
    r = echo.post(data="é,ü\n".encode(), headers=headers)
    assert r.status_code == 200, r.text
    seen = r.json()
    assert seen["type"] == kind
    assert seen["length"] == (4 if kind == "str" else 6)
    assert seen["content_type"] == (content_type or "application/octet-stream")
    assert seen["context"] == "None"  # predict_fn's optional trailing context


@pytest.mark.parametrize("accept", [None, "*/*", "text/plain"])
def test_missing_or_any_accept_becomes_the_default(echo, accept):
    headers = {"Content-Type": "text/csv"}
    headers["Accept"] = accept  # None drops requests' own "*/*"
    r = echo.post(data=b"a", headers=headers)
    assert r.status_code == 200
    expected = accept if accept == "text/plain" else "application/json"
    assert r.json()["accept"] == expected
    assert r.headers["content-type"].startswith(expected)


def test_model_fn_runs_once_and_reads_the_model_dir(echo):
    for _ in range(3):
        seen = echo.post(data=b"{}", headers={"Content-Type": "application/json"}).json()
        assert seen["loads"] == 1 and seen["weights"] == "w-123"


def test_invalid_utf8_text_is_a_400(echo):
    r = echo.post(data=b"\xff\xfe,1\n", headers={"Content-Type": "text/csv"})
    assert_error(r, 400, "UTF-8")
    assert echo.get("/ping").status_code == 200


def test_body_over_the_limit_is_413_by_content_length(echo):
    limit = 1024 * 1024
    ok = echo.post(data=b"x" * limit, headers={"Content-Type": "image/png"})
    assert ok.status_code == 200 and ok.json()["length"] == limit
    r = echo.post(data=b"x" * (limit + 1), headers={"Content-Type": "image/png"})
    assert_error(r, 413, "1,048,576", "SAGEMAKER_MAX_PAYLOAD_IN_MB")
    assert echo.post(data=b"{}", headers={"Content-Type": "application/json"}).status_code == 200


def test_body_over_the_limit_is_413_when_chunked(echo):
    def chunks(total: int, size: int = 64 * 1024):
        for start in range(0, total, size):
            yield b"y" * min(size, total - start)

    r = echo.post(data=chunks(1536 * 1024), headers={"Content-Type": "image/png"})
    assert "content-length" not in r.request.headers  # really sent chunked
    assert_error(r, 413, "SAGEMAKER_MAX_PAYLOAD_IN_MB")
    r = echo.post(data=chunks(700 * 1024), headers={"Content-Type": "image/png"})
    assert r.status_code == 200 and r.json()["length"] == 700 * 1024


def test_execution_parameters_come_from_env(echo):
    r = echo.get("/execution-parameters")
    assert r.status_code == 200
    assert r.json() == {"MaxConcurrentTransforms": 3, "BatchStrategy": "SINGLE_RECORD",
                        "MaxPayloadInMB": 1}


def test_unknown_paths_and_methods_are_json_errors(echo):
    assert_error(echo.get("/models"), 404)
    assert_error(echo.get("/invocations"), 405)
    assert_error(echo.post("/ping"), 405)


def test_boto3_invoke_endpoint(echo, monkeypatch):
    client = runtime_client(monkeypatch, echo.url)
    out = client.invoke_endpoint(EndpointName="my-endpoint", Body=b"a,b\n",
                                 ContentType="text/csv", Accept="application/x-echo")
    assert out["Body"].read() == b"a,b\n"
    assert out["ContentType"] == "text/csv"
    assert out["InvokedProductionVariant"] == "AllTraffic"
    too_big = b"z" * (1024 * 1024 + 1)
    with pytest.raises(client.exceptions.ModelError) as err:
        client.invoke_endpoint(EndpointName="e", Body=too_big, ContentType="image/png")
    assert err.value.response["OriginalStatusCode"] == 413


def test_read_only_model_dir_is_never_written(echo, echo_dir, echo_before):
    assert echo.post(data=b"1", headers={"Content-Type": "text/csv"}).status_code == 200
    assert oct((echo_dir / "code").stat().st_mode & 0o777) == "0o555"
    assert snapshot(echo_dir) == echo_before  # no __pycache__, nothing changed


def test_one_log_line_per_request(echo):
    def new_lines(before: int) -> list[str]:
        def written() -> bool:
            lines = echo.log()[before:].splitlines()
            return bool(lines) and lines[-1].endswith(" ms")

        try:  # the line is written as the answer is sent
            wait_until(written, 2, "the request's log line", interval=0.02)
        except TimeoutError:
            pass  # the assertions say what was written
        return echo.log()[before:].splitlines()

    for method, path, status in (("GET", "/ping", 200), ("POST", "/invocations", 200),
                                 ("GET", "/no-such-path", 404)):
        before = len(echo.log())
        if method == "GET":
            assert echo.get(path).status_code == status
        else:
            assert echo.post(path, data=b"{}", headers={"Content-Type": "application/json"}).ok
        lines = new_lines(before)
        assert len(lines) == 1, lines  # this request's line, and nothing else
        assert f" {method} {path} {status} " in lines[0] and lines[0].endswith(" ms")


# --------------------------------------------------------------------------- control server


@pytest.mark.parametrize("status", [400, 404, 406, 415, 422, 503])
def test_inference_error_gives_its_status(control, status):
    r = control.post(data=json.dumps({"status": status, "message": f"bad thing {status}"}),
                     headers={"Content-Type": "application/json"})
    assert_error(r, status, f"bad thing {status}")
    assert control.post(data=b"{}", headers={"Content-Type": "application/json"}).json()["ok"]


def test_any_exception_with_status_code_and_message_gives_its_status(control):
    r = control.post(data=b'{"toolkit_like": 409}', headers={"Content-Type": "application/json"})
    assert_error(r, 409, "toolkit-style error")
    r = control.post(data=b'{"toolkit_like": 302}', headers={"Content-Type": "application/json"})
    assert_error(r, 500, "internal error")


def test_plain_exception_is_a_500_without_traceback(control):
    r = control.post(data=b'{"plain": "secret-detail-42"}', headers={"Content-Type": "application/json"})
    body = assert_error(r, 500, "internal error", "RuntimeError", "transform_fn")
    assert "secret-detail-42" not in json.dumps(body)
    log = control.log()
    assert "Traceback" in log and "secret-detail-42" in log
    assert control.get("/ping").status_code == 200
    assert control.post(data=b"{}", headers={"Content-Type": "application/json"}).status_code == 200


def test_boto3_sees_model_errors_like_a_real_endpoint(control, monkeypatch):
    from botocore.exceptions import ClientError

    client = runtime_client(monkeypatch, control.url)
    with pytest.raises(client.exceptions.ModelError) as err:
        client.invoke_endpoint(EndpointName="my-endpoint", ContentType="application/json",
                               Body=json.dumps({"status": 400, "message": "pred_threshold=10"}))
    response = err.value.response
    assert response["Error"]["Code"] == "ModelError"
    assert response["OriginalStatusCode"] == 400
    assert json.loads(response["OriginalMessage"]) == {"error": "pred_threshold=10", "status": 400}
    assert "pred_threshold=10" in response["Error"]["Message"]
    with pytest.raises(ClientError) as err:
        client.invoke_endpoint(EndpointName="my-endpoint", ContentType="application/json",
                               Body=b'{"plain": "boom"}')
    assert err.value.response["Error"]["Code"] == "ModelError"
    assert err.value.response["OriginalStatusCode"] == 500
    raw = control.post("/endpoints/my-endpoint/invocations", data=b'{"plain": "boom"}',
                       headers={"Content-Type": "application/json"})
    assert raw.status_code == 424 and raw.headers["x-amzn-ErrorType"] == "ModelError"
    assert raw.json()["ErrorCode"] == "SERVER_ERROR_FROM_MODEL"
    assert "Traceback" not in raw.text and "boom" not in raw.text
    out = client.invoke_endpoint(EndpointName="my-endpoint", ContentType="application/json",
                                 Body=b'{"x": 1}')
    assert json.loads(out["Body"].read()) == {"ok": True, "echo": {"x": 1}}


def test_timeout_is_a_504_and_ping_stays_responsive(control):
    result = {}

    def slow():
        result["r"] = control.post(data=b'{"sleep": 1.5}', headers={"Content-Type": "application/json"})

    thread = threading.Thread(target=slow)
    started = time.monotonic()
    thread.start()
    time.sleep(0.2)
    t = time.monotonic()
    assert control.get("/ping").status_code == 200
    assert time.monotonic() - t < 0.5  # /ping is not stuck behind the handler thread
    thread.join(10)
    assert_error(result["r"], 504, "1 s", "SAGEMAKER_MODEL_SERVER_TIMEOUT")
    assert 0.9 < time.monotonic() - started < 1.5
    def answered() -> requests.Response | None:
        r = control.post(data=b"{}", headers={"Content-Type": "application/json"})
        return r if r.status_code == 200 else None

    # the handler thread frees up once the sleep ends
    r = wait_until(answered, 5, "the handler thread to be free", interval=0)
    assert r.status_code == 200 and r.json()["ok"]


# --------------------------------------------------------------------------- start and stop


def test_ping_is_503_until_model_fn_returns(tmp_path):
    server = Serve(make_model_dir(tmp_path, "control.py"), tmp_path,
                   env={"CONTROL_MODEL_FN_SLEEP": "2"})
    try:
        first = server.wait_listening()
        assert_error(first, 503, "loading")
        early = server.post(data=b"{}", headers={"Content-Type": "application/json"})
        assert_error(early, 503, "loading")
        server.wait_ready(timeout=10)
        r = server.post(data=b"{}", headers={"Content-Type": "application/json"})
        assert r.status_code == 200 and r.json()["ok"]
    finally:
        assert server.stop() == 0


def test_failed_model_fn_is_503_for_good(tmp_path):
    server = Serve(make_model_dir(tmp_path, "control.py"), tmp_path,
                   env={"CONTROL_MODEL_FN_FAIL": "weights are corrupt"})
    try:
        server.wait_listening()
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            assert_error(server.get("/ping"), 503, "failed to load", "weights are corrupt")
            time.sleep(0.1)
        r = server.post(data=b"{}", headers={"Content-Type": "application/json"})
        assert_error(r, 503, "failed to load")
        log = server.log()
        assert "model_fn failed" in log and "Traceback" in log and "weights are corrupt" in log
        assert server.process.poll() is None
    finally:
        assert server.stop() == 0


def test_sigterm_finishes_the_request_in_flight_then_exits_0(tmp_path):
    server = Serve(make_model_dir(tmp_path, "control.py"), tmp_path)
    marker = tmp_path / "started"
    try:
        server.wait_ready()
        result = {}

        def slow():
            result["r"] = server.post(
                data=json.dumps({"sleep": 1.5, "marker": str(marker)}),
                headers={"Content-Type": "application/json"})

        thread = threading.Thread(target=slow)
        thread.start()
        wait_until(marker.exists, 5, f"{marker} to appear", interval=0.02)
        assert marker.exists()
        server.process.send_signal(signal.SIGTERM)
        def refuses() -> bool:
            try:
                socket.create_connection(("127.0.0.1", server.port), timeout=0.2).close()
                return False
            except OSError:
                return True

        # stops accepting while the request runs
        refused = wait_until(refuses, 1.0, "serve to stop accepting connections", interval=0.02, ignore=())
        assert refused and thread.is_alive()
        thread.join(10)
        assert result["r"].status_code == 200 and result["r"].json() == {"slept": 1.5}
        assert server.process.wait(10) == 0
    finally:
        server.stop()


def test_several_workers_each_load_the_model(tmp_path):
    server = Serve(make_model_dir(tmp_path, "echo.py"), tmp_path, args=["--workers", "2"])
    try:
        server.wait_ready(timeout=30)
        seen = server.post(data=b"{}", headers={"Content-Type": "application/json"}).json()
        assert seen["loads"] == 1 and seen["weights"] == "w-123"
        assert seen["pid"] != server.process.pid  # answered by a worker process
    finally:
        assert server.stop() == 0


def test_local_server_with_workers_is_ready_once_every_worker_has_loaded(tmp_path):
    # the first worker loads at once, the second 3 s later: /ping is 200 long before
    slow = {"ECHO_SLOW_LOADS": str(tmp_path / "first-load")}
    with smvision_serve(make_model_dir(tmp_path, "echo.py"), env=slow, ready_timeout_s=60, workers=2) as server:
        assert server.loaded_workers() == 2
        pids = set()
        for _ in range(40):  # fresh connections: both workers take them
            pids.add(requests.post(server.url + "/invocations", data=b"{}", timeout=10,
                                   headers={"Content-Type": "application/json"}).json()["pid"])
            if len(pids) == 2:
                break
        assert len(pids) == 2
    with pytest.raises(ValueError, match="SMVISION_LOG_LEVEL=warning"):
        smvision_serve(tmp_path, env={"SMVISION_LOG_LEVEL": "warning"}, workers=2)


# --------------------------------------------------------------------------- the handler in-process


def _entry(tmp_path: Path, source: str) -> "Handler":
    """A Handler on a one-off entry script (a unique module name per test)."""
    from smvision.container.handler import Handler

    name = f"entry_{tmp_path.name.replace('-', '_')}"
    (tmp_path / "code").mkdir(exist_ok=True)
    (tmp_path / "code" / f"{name}.py").write_text(source)
    handler = Handler(str(tmp_path), f"{name}.py")
    handler.load()
    return handler


def test_handler_defaults_without_input_predict_output_fn(tmp_path):
    from smvision.errors import InferenceError

    handler = _entry(tmp_path, "def model_fn(model_dir):\n    return lambda x: {'n': len(x)}\n")
    assert handler.invoke(b"[1, 2, 3]", "application/json", None) == (b'{"n": 3}', "application/json")
    with pytest.raises(InferenceError) as err:
        handler.invoke(b"[1", "application/json", None)
    assert err.value.status_code == 400
    with pytest.raises(InferenceError) as err:
        handler.invoke(b"abc", "image/png", None)
    assert err.value.status_code == 415
    with pytest.raises(InferenceError) as err:
        handler.invoke(b"[]", "application/json", "text/csv")
    assert err.value.status_code == 406


@pytest.mark.parametrize(
    "returned, body, content_type",
    [
        ("b'raw'", b"raw", "application/x-test"),
        ("'text é'", "text é".encode(), "application/x-test"),
        ("(b'x', 'image/png')", b"x", "image/png"),
        ("{'a': [1, 2]}", b'{"a": [1, 2]}', "application/x-test"),
        ("None", b"", "application/x-test"),
    ],
)
def test_handler_response_shapes(tmp_path, returned, body, content_type):
    handler = _entry(
        tmp_path,
        "def model_fn(model_dir, context):\n    return None\n"
        f"def transform_fn(model, data, content_type, accept, context):\n    return {returned}\n",
    )
    assert handler.invoke(b"", "text/csv", "application/x-test") == (body, content_type)


def test_handler_refuses_functions_of_the_wrong_shape(tmp_path):
    from smvision.container.handler import EntryScriptError

    with pytest.raises(EntryScriptError, match="predict_fn takes 4"):
        _entry(tmp_path, "def model_fn(d):\n    return 1\ndef predict_fn(a, b, c, d):\n    pass\n")
