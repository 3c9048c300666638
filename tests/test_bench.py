"""`smvision bench`, THE percentile, and the Server-Timing parser."""

from __future__ import annotations

import json
import statistics

import pytest
import requests

from conftest import BUCKET
from smvision.cli import main
from smvision.deploy.bench import count_records, parse_server_timing
from smvision.deploy.stats import percentile
from support import free_port


@pytest.mark.parametrize(
    "header, stages",
    [
        ("input;dur=3.1, predict;dur=180.2, output;dur=0.4", {"input": 3.1, "predict": 180.2, "output": 0.4}),
        ('fetch;desc="S3, 2 objects";dur=12, decode;dur=4.5', {"fetch": 12.0, "decode": 4.5}),
        ("forward;dur=10,forward;dur=5, nms;dur=\"0.25\"", {"forward": 15.0, "nms": 0.25}),
        ("cache-hit, total;DUR=7", {"total": 7.0}),  # no dur: left out; names and params are case-insensitive tokens
        ("bad name;dur=1, ok;dur=x, ok2;dur=2", {"ok2": 2.0}),
        ("", {}),
        (None, {}),
    ],
)
def test_server_timing_parser(header, stages):
    assert parse_server_timing(header) == stages


def test_percentile_is_statistics_quantiles_inclusive():
    values = [float(v) for v in (12, 3, 45, 7, 7, 100, 2, 9, 31, 18)]
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    assert percentile(values, 0.5) == statistics.median(values) == cuts[49]
    assert percentile(values, 0.95) == cuts[94] == pytest.approx(75.25)  # 45 + 0.55 * (100 - 45)
    assert percentile(values, 0.99) == cuts[98]
    assert (percentile(values, 0), percentile(values, 1), percentile([5.0], 0.99)) == (2.0, 100.0, 5.0)
    with pytest.raises(ValueError):
        percentile(values, 0.955)


def test_records_per_body_follow_the_request_contract():
    assert count_records(b"b/a.jpg\nb/c.jpg\n\n", "text/csv") == 2
    assert count_records(b'[{"s3_uri": "s3://b/a"}, {"s3_uri": "s3://b/c"}]', "application/json") == 2
    assert count_records(b'{"s3_uri": "s3://b/a"}', "application/json; charset=utf-8") == 1
    assert count_records(b"\xff\xd8 jpeg bytes", "image/jpeg") == 1


def stages_sent(server) -> bool:
    answer = requests.post(server.url + "/invocations", data=f"{BUCKET}/rocket.jpg", headers={"Content-Type": "text/csv"}, timeout=60)
    return "server-timing" in answer.headers


def test_bench_a_local_server(d0_server, capsys):
    assert main(["bench", "--url", d0_server.url, "--s3", f"{BUCKET}/rocket.jpg", f"{BUCKET}/coffee.png",
                 f"{BUCKET}/chelsea.png", "--records-per-request", "2", "-n", "4", "-c", "2", "--warmup", "0",
                 "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["requests"], summary["concurrency"], summary["ok"], summary["errors"]) == (4, 2, 4, {})
    assert summary["images_per_s"] == pytest.approx(2 * summary["requests_per_s"], rel=0.01)  # two images a request
    assert 0 < summary["p50_ms"] <= summary["p95_ms"] <= summary["p99_ms"]
    # the server's stage times appear exactly when it sends Server-Timing
    assert bool(summary["server_stages_ms"]) == stages_sent(d0_server)


def test_bench_counts_errors_by_status_and_json_output(d0_server, tmp_path, capsys):
    body = tmp_path / "bad.json"
    body.write_text(json.dumps({"bucket": BUCKET, "key": "rocket.jpg", "pred_threshold": 10}))
    assert main(["bench", "--url", d0_server.url, str(body), "-n", "3", "-c", "3", "--warmup", "0", "--json"]) == 1
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert (summary["requests"], summary["ok"], summary["errors"]) == (3, 0, {"400": 3})
    assert summary["p50_ms"] is None and summary["requests_per_s"] is None and summary["images_per_s"] is None
    assert "pred_threshold" in summary["first_error"]["400"]  # the server's own message
    assert "smvision: error: every request failed (400: 3): no rate to report" in captured.err


def test_bench_an_endpoint_by_name(d0_server, monkeypatch, capsys):
    monkeypatch.setenv("AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME", d0_server.url)
    assert main(["bench", "--name", "d0", "--s3", f"{BUCKET}/rocket.jpg", f"{BUCKET}/missing.jpg",
                 "-n", "2", "-c", "1", "--warmup", "0"]) == 0
    out = capsys.readouterr().out
    assert "target      endpoint d0" in out
    assert "requests    2 at concurrency 1 in " in out and " images/s" in out
    assert "latency ms  p50 " in out and "(1 answered)" in out
    assert "errors      404: 1" in out


def test_bench_where_no_request_was_answered_reports_no_rate(tmp_path, capsys):
    body = tmp_path / "one.csv"
    body.write_text(f"{BUCKET}/rocket.jpg\n")
    closed = f"http://127.0.0.1:{free_port()}"
    assert main(["bench", "--url", closed, str(body), "-n", "3", "-c", "1", "--warmup", "0"]) == 1
    captured = capsys.readouterr()
    assert "requests/s" not in captured.out and "images/s" not in captured.out
    assert "no rate: no request was answered" in captured.out
    assert "errors      no answer: 3 (first: " in captured.out and "refused" in captured.out.lower()
    assert "smvision: error: every request failed (no answer: 3): no rate to report" in captured.err

    assert main(["bench", "--url", closed, str(body), "-n", "2", "--warmup", "0", "--json"]) == 1
    summary = json.loads(capsys.readouterr().out)
    assert (summary["ok"], summary["requests_per_s"], summary["images_per_s"]) == (0, None, None)
    assert summary["errors"] == {"0": 2}


def test_a_directory_as_the_body_is_a_usage_error(tmp_path, capsys):
    assert main(["bench", "--url", f"http://127.0.0.1:{free_port()}", str(tmp_path), "-n", "1"]) == 2
    err = capsys.readouterr().err
    assert err == f"smvision: error: the body file {tmp_path} is a directory: give a file, or - for stdin\n"
