"""Hardening of the serving process, with small entry scripts (tests/fixtures/
server_entries/) in a real subprocess on 127.0.0.1: stuck workers, SIGTERM with work
still running, Server-Timing, logs that cannot be forged, workers that take traffic
only once loaded."""

from __future__ import annotations

import json
import threading
import time

import pytest
import requests

from smvision.deploy.server_process import wait_until
from test_server import Serve, assert_error, make_model_dir

JSON_TYPE = {"Content-Type": "application/json"}


def post_json(server: Serve, body: dict, timeout: float = 10) -> requests.Response:
    return server.post(data=json.dumps(body), headers=JSON_TYPE, timeout=timeout)


def in_background(fn, *args) -> tuple[threading.Thread, dict]:
    out: dict = {}

    def run() -> None:
        try:
            out["r"] = fn(*args)
        except Exception as exc:  # noqa: BLE001 - the test reads it
            out["error"] = exc
        out["at"] = time.monotonic()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


def test_a_stuck_worker_answers_ping_503_until_it_is_free(tmp_path):
    server = Serve(make_model_dir(tmp_path, "control.py"), tmp_path,
                   env={"SAGEMAKER_MODEL_SERVER_TIMEOUT": "1", "SMVISION_STUCK_AFTER_S": "1"})
    try:
        server.wait_ready()
        started = time.monotonic()
        # time.sleep never checks the deadline: the worker stays busy past the 504.
        assert_error(post_json(server, {"sleep": 4}), 504, "SAGEMAKER_MODEL_SERVER_TIMEOUT")
        assert server.get("/ping").status_code == 200  # just late, not stuck yet
        while time.monotonic() - started < 2.6:
            time.sleep(0.05)
        assert_error(server.get("/ping"), 503, "stuck", "SMVISION_STUCK_AFTER_S")
        assert_error(post_json(server, {}), 503, "stuck")  # at once, not after 1 s
        wait_until(lambda: server.get("/ping").status_code == 200, 5, "/ping to be 200 again")
        assert time.monotonic() - started > 3.5  # healthy again only once the sleep ended
        assert post_json(server, {}).json()["ok"]
    finally:
        assert server.stop() == 0


def wait_for_file(path, timeout: float = 10) -> None:
    wait_until(path.exists, timeout, f"{path} to appear", interval=0.02)
    assert path.exists(), f"{path} never appeared"


def test_sigterm_with_a_timed_out_torch_job_still_running_exits_0_at_once(tmp_path):
    server = Serve(make_model_dir(tmp_path, "control.py"), tmp_path,
                   env={"SAGEMAKER_MODEL_SERVER_TIMEOUT": "1"})
    marker = tmp_path / "spinning"
    try:
        server.wait_ready()
        r = post_json(server, {"spin_torch": 60, "marker": str(marker)})
        assert_error(r, 504, "SAGEMAKER_MODEL_SERVER_TIMEOUT")
        wait_for_file(marker)
        sent = time.monotonic()
        server.process.terminate()
        code = server.process.wait(15)
        took = time.monotonic() - sent
        print(f"SIGTERM with a stuck torch job: exit {code} after {took:.2f} s")
        assert code == 0, server.log()  # not 134 (SIGABRT inside torch at interpreter exit)
        assert took < 5
    finally:
        server.stop()


def test_sigterm_refuses_queued_requests_at_once_and_ends_within_the_drain_window(tmp_path):
    server = Serve(make_model_dir(tmp_path, "control.py"), tmp_path,
                   env={"SAGEMAKER_MODEL_SERVER_TIMEOUT": "60", "SMVISION_DRAIN_S": "2"})
    marker = tmp_path / "started"
    try:
        server.wait_ready()
        running = in_background(post_json, server, {"sleep": 30, "marker": str(marker)}, 60)
        wait_for_file(marker)
        queued = [in_background(post_json, server, {"sleep": 30}, 60) for _ in range(3)]
        time.sleep(0.3)  # all three are waiting for the one handler thread
        sent = time.monotonic()
        server.process.terminate()
        for thread, out in queued:
            thread.join(5)
            assert_error(out["r"], 503, "shutting down")
            assert out["at"] - sent < 1.0  # refused at once, not after their own 60 s
        thread, out = running
        thread.join(10)
        assert_error(out["r"], 503, "shutting down", "SMVISION_DRAIN_S")
        assert 1.8 < out["at"] - sent < 4.0
        assert server.process.wait(10) == 0
        took = time.monotonic() - sent
        print(f"SIGTERM with one running and three queued requests: exit 0 after {took:.2f} s")
        assert took < 5
    finally:
        server.stop()


def timings(response: requests.Response) -> dict[str, float]:
    """The W3C Server-Timing header as {name: milliseconds}."""
    out = {}
    for part in response.headers["server-timing"].split(","):
        name, _, dur = part.strip().partition(";dur=")
        out[name] = float(dur)
    return out


def test_every_invocations_answer_has_server_timing(tmp_path):
    server = Serve(make_model_dir(tmp_path, "echo.py"), tmp_path,
                   env={"SAGEMAKER_MAX_PAYLOAD_IN_MB": "0.01"})
    try:
        server.wait_ready()
        ok = server.post(data=b"{}", headers=JSON_TYPE)
        assert ok.status_code == 200
        stages = timings(ok)
        assert list(stages) == ["receive", "queue", "input", "predict", "output", "total"]
        assert all(ms >= 0 for ms in stages.values())
        assert stages["total"] >= stages["input"] + stages["predict"] + stages["output"]
        runtime = server.post("/endpoints/e/invocations", data=b"{}", headers=JSON_TYPE)
        assert "predict" in timings(runtime)
        too_big = server.post(data=b"x" * 20000, headers={"Content-Type": "image/png"})
        assert too_big.status_code == 413 and "total" in timings(too_big)
        assert "server-timing" not in server.get("/ping").headers
    finally:
        assert server.stop() == 0


FORGED = "2026-01-01 00:00:00,000 [1] INFO smvision.container: POST /invocations 200 1.00 ms"


def test_caller_values_cannot_forge_log_lines_or_swell_answers(tmp_path):
    server = Serve(make_model_dir(tmp_path, "control.py"), tmp_path)
    try:
        server.wait_ready()
        message = "bad key 'x\r\n" + FORGED + "\x00'" + "y" * 1_000_000
        r = post_json(server, {"status": 400, "message": message})
        body = assert_error(r, 400, "bad key")
        assert len(r.content) < 3000 and "1,0" in body["error"]  # cut, and says how long it was
        r = server.get("/ping%0d%0a" + FORGED.replace(" ", "%20"))
        assert r.status_code == 404 and len(r.content) < 1000
        log = server.log()
        lines = log.splitlines()
        assert not any(line.startswith("2026-01-01") for line in lines)
        assert "\x00" not in log and max(len(line) for line in lines) < 5000
        assert "\\r\\n2026-01-01" in log  # escaped, on the line it belongs to
    finally:
        assert server.stop() == 0


def test_no_authorization_header_in_the_log_even_at_debug(tmp_path, photos):
    from conftest import BUCKET

    server = Serve(make_model_dir(tmp_path, "control.py"), tmp_path,
                   env={"SMVISION_LOG_LEVEL": "debug"})
    try:
        server.wait_ready()
        r = post_json(server, {"s3_read": [BUCKET, "rocket.jpg"]})
        assert r.status_code == 200 and r.json()["bytes"] == len(photos["rocket.jpg"])
        log = server.log()
        assert "Sending http request" in log  # botocore's debug lines are there...
        assert "'Authorization': <redacted>" in log
        assert "AWS4-HMAC-SHA256 Credential" not in log  # ...without the signed header
    finally:
        assert server.stop() == 0


#: An STS-shaped session token holding the characters URL encoding changes (/ + =).
SESSION_TOKEN = "IQoJb3JpZ2luX2VjEJr//////////wEaCXVzLWVhc3QtMSJHMEUCIQD+smvision/test+token=="


def written_forms(secret: str) -> set[str]:
    """secret as a log line may carry it: raw, URL-encoded (%2F, + or %2B, %3D), and
    URL-encoded twice (a URL inside another URL's query)."""
    from urllib.parse import quote, quote_plus

    once = {quote(secret, safe=""), quote_plus(secret), quote(secret)}
    return {secret} | once | {quote(form, safe="") for form in once}


def test_no_signature_token_or_credential_in_the_log_at_debug_from_any_logger(tmp_path, photos):
    from urllib.parse import parse_qs, urlsplit

    from conftest import BUCKET

    server = Serve(make_model_dir(tmp_path, "control.py"), tmp_path,
                   env={"SMVISION_LOG_LEVEL": "debug", "AWS_SESSION_TOKEN": SESSION_TOKEN,
                        "AWS_ACCESS_KEY_ID": "ASIAEXAMPLESMVISION1"})
    try:
        server.wait_ready()
        assert post_json(server, {"s3_read": [BUCKET, "rocket.jpg"]}).status_code == 200
        secrets = {SESSION_TOKEN}
        for version in (None, "s3v4"):  # SigV2's Signature=<base64>, SigV4's X-Amz-Signature=<hex>
            answer = post_json(server, {"presigned_get": [BUCKET, "rocket.jpg"], "signature_version": version})
            assert answer.status_code == 200, answer.text
            query = parse_qs(urlsplit(answer.json()["url"]).query)
            for name in ("Signature", "X-Amz-Signature", "X-Amz-Credential", "x-amz-security-token",
                         "X-Amz-Security-Token"):
                secrets.update(query.get(name, []))
        assert len(secrets) == 4, secrets  # the token, two signatures, one credential
        log = server.log()
        # botocore's and urllib3's debug lines are there, presigned URLs included...
        assert "botocore.auth" in log and f'"GET /{BUCKET}/rocket.jpg?' in log
        leaks = sorted(form for secret in secrets for form in written_forms(secret) if form in log)
        assert not leaks, [line for line in log.splitlines() if any(form in line for form in leaks)][:5]
        assert "Signature=<redacted>" in log and "X-Amz-Signature=<redacted>" in log  # ...said so
    finally:
        assert server.stop() == 0


def test_no_model_path_in_error_bodies(tmp_path):
    model_dir = make_model_dir(tmp_path, "control.py")
    server = Serve(model_dir, tmp_path, env={"CONTROL_MODEL_FN_FAIL": f"cannot read {model_dir}/weights.bin"})
    try:
        server.wait_listening()
        wait_until(lambda: "failed" in server.get("/ping").text, 10, "/ping to say the model failed", interval=0.05)
        for r in (server.get("/ping"), post_json(server, {})):
            body = assert_error(r, 503, "failed to load", "cannot read <model dir>/weights.bin")
            assert str(model_dir) not in body["error"] and str(tmp_path) not in body["error"]
        assert str(model_dir) in server.log()  # the operator still sees it
    finally:
        assert server.stop() == 0


@pytest.mark.parametrize("workers, env, expected", [
    (2, {}, "cores // 2"),
    (1, {"SMVISION_THREADS": "1"}, "SMVISION_THREADS=1"),
])
def test_each_worker_gets_its_share_of_the_cores(tmp_path, monkeypatch, workers, env, expected):
    from smvision.threads import cpu_count

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("SMVISION_THREADS", raising=False)
    server = Serve(make_model_dir(tmp_path, "control.py"), tmp_path, env=env, args=["--workers", str(workers)])
    try:
        server.wait_ready(timeout=30)
        want = int(env.get("SMVISION_THREADS", max(1, cpu_count() // workers)))
        answers = [post_json(server, {"torch_threads": 1}).json() for _ in range(4)]
        assert {a["threads"] for a in answers} == {want}, answers
        assert f"{want} compute thread(s) per worker" in server.log() and expected in server.log()
    finally:
        assert server.stop() == 0


def test_a_bad_thread_count_stops_the_process_at_start(tmp_path):
    import subprocess
    import sys

    model_dir = make_model_dir(tmp_path, "control.py")
    bad = subprocess.run([sys.executable, "-m", "smvision.container.serve", "--model-dir", str(model_dir)],
                         env={**__import__("os").environ, "SMVISION_THREADS": "many"},
                         capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and "SMVISION_THREADS='many'" in bad.stderr


def test_workers_take_traffic_only_once_loaded_at_start_and_after_a_restart(tmp_path):
    import os
    import signal

    server = Serve(make_model_dir(tmp_path, "echo.py"), tmp_path, args=["--workers", "2"],
                   env={"ECHO_SLOW_LOADS": str(tmp_path / "first-load")})

    def hammer(seconds: float) -> tuple[list[int], set[int]]:
        """Fresh connections for `seconds` (at most 200): statuses and answering pids."""
        statuses, pids = [], set()
        end = time.monotonic() + seconds
        while time.monotonic() < end and len(statuses) < 200:
            r = server.post(data=b"{}", headers=JSON_TYPE)
            statuses.append(r.status_code)
            if r.ok:
                pids.add(r.json()["pid"])
            time.sleep(0.02)
        return statuses, pids

    try:
        server.wait_ready(timeout=30)  # the fast worker; the other loads for 3 s more
        statuses, pids = hammer(2.0)
        assert set(statuses) == {200}, f"{statuses.count(503)} of {len(statuses)} got 503 at start"
        assert len(pids) == 1  # only the worker that had loaded
        time.sleep(1.5)
        statuses, pids = hammer(2.0)
        assert set(statuses) == {200} and len(pids) == 2, (statuses, pids)  # both serve now
        victim = pids.pop()
        os.kill(victim, signal.SIGKILL)  # uvicorn restarts it; its model takes 3 s to load
        statuses, pids = hammer(3.0)
        assert set(statuses) == {200}, f"{statuses.count(503)} of {len(statuses)} got 503 after a restart"
        assert victim not in pids
        wait_until(lambda: server.log().count("model loaded") >= 3, 15, "the restarted worker to load")
        statuses, pids = hammer(1.5)
        assert set(statuses) == {200} and len(pids) == 2 and victim not in pids  # back to two
    finally:
        assert server.stop() == 0
