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
        while time.monotonic() - started < 2.3:
            time.sleep(0.05)
        assert_error(server.get("/ping"), 503, "stuck", "SMVISION_STUCK_AFTER_S")
        assert_error(post_json(server, {}), 503, "stuck")  # at once, not after 1 s
        deadline = time.monotonic() + 5
        while server.get("/ping").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert time.monotonic() - started > 3.5  # healthy again only once the sleep ended
        assert post_json(server, {}).json()["ok"]
    finally:
        assert server.stop() == 0
