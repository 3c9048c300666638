"""`smvision transform --local`: SageMaker batch transform semantics against one D0 server.

One server for the whole module (started by the product's smvision_serve, as `--local
--model-dir` does), with the batch variables SageMaker sets; each case reads a
different input prefix of real photos in moto S3.
"""

from __future__ import annotations

import http.server
import json
import os
import re
import signal
import subprocess

import boto3
import pytest
import urllib3

from conftest import BUCKET
from smvision.cli import main
from support import BIN, HttpStub
from smvision.deploy.server_process import smvision_serve, wait_until
from smvision.deploy.local_transform import TransformOptions, run_local_transform

DATA = "smvision-batch"
LOW = {"pred_threshold": 0.005}  # random weights score about 0.01: this lets boxes through


def jsonl(*records: dict) -> bytes:
    return "".join(json.dumps(record) + "\n" for record in records).encode()


INPUTS = {
    # CSV: a.csv (3 lines), b.csv (2 lines, a blank line, CRLF), empty.csv
    "csv/a.csv": f"{BUCKET}/rocket.jpg\n{BUCKET}/astronaut.png\ns3://{BUCKET}/coffee.png\n".encode(),
    "csv/b.csv": f"{BUCKET}/chelsea.png\r\n\r\n{BUCKET}/rocket.jpg".encode(),
    "csv/empty.csv": b"",
    # JSON lines with parameters; bad.jsonl's second record has an impossible threshold
    "jsonl/bad.jsonl": jsonl({"bucket": BUCKET, "key": "coffee.png", **LOW},
                             {"bucket": BUCKET, "key": "rocket.jpg", "pred_threshold": 10},
                             {"bucket": BUCKET, "key": "chelsea.png", **LOW}),
    "jsonl/good.jsonl": jsonl({"bucket": BUCKET, "key": "rocket.jpg", **LOW}, {"bucket": BUCKET, "key": "chelsea.png", **LOW}),
    # whole objects (SplitType None)
    "json/one.json": json.dumps({"bucket": BUCKET, "key": "astronaut.png", **LOW}).encode(),
    "json/two.json": json.dumps([{"bucket": BUCKET, "key": "chelsea.png"}, {"bucket": BUCKET, "key": "coffee.png"}]).encode(),
    # mixed/b.csv is stored in the GLACIER storage class (below): S3 refuses to read it
    "mixed/a.csv": f"{BUCKET}/rocket.jpg\n".encode(),
    "mixed/c.csv": f"{BUCKET}/no-such-photo.jpg\n".encode(),
    "mixed/d.csv": f"{BUCKET}/chelsea.png\n".encode(),
}
ARCHIVED = {"mixed/b.csv": f"{BUCKET}/coffee.png\n".encode()}


@pytest.fixture(scope="module")
def s3(photos):
    client = boto3.client("s3")
    client.create_bucket(Bucket=DATA)
    for key, data in INPUTS.items():
        client.put_object(Bucket=DATA, Key=key, Body=data)
    for key, data in ARCHIVED.items():
        client.put_object(Bucket=DATA, Key=key, Body=data, StorageClass="GLACIER")
    return client


@pytest.fixture(scope="module")
def server(d0_model_dir, s3):
    options = TransformOptions(batch_strategy="MultiRecord", max_concurrent_transforms=2, max_payload_mb=6)
    with smvision_serve(d0_model_dir, env=options.server_env(), ready_timeout_s=180) as running:
        yield running.url


def read(s3, uri: str) -> bytes:
    bucket, _, key = uri[5:].partition("/")
    return s3.get_object(Bucket=bucket, Key=key)["Body"].read()


def keys(s3, prefix: str) -> list[str]:
    return [item["Key"] for item in s3.list_objects_v2(Bucket=DATA, Prefix=prefix).get("Contents", [])]


def outcome(state: str, detail: str) -> str:
    """One row of the summary `transform --local` ends with, on stderr."""
    return f"  {state:<11}  {detail}"


def transform(server: str, prefix: str, output: str, *extra: str) -> list[str]:
    """`smvision transform --local` arguments: CSV lines, one record per request, through server."""
    return ["transform", "--local", "--server-url", server, "--input", f"s3://{DATA}/{prefix}", "--output", output,
            "--content-type", "text/csv", "--accept", "application/jsonlines", "--split-type", "Line",
            "--batch-strategy", "SingleRecord", "--assemble-with", "Line", "--no-progress", *extra]


def test_server_runs_as_a_batch_transform_container(server):
    answer = urllib3.request("GET", server + "/execution-parameters")
    assert json.loads(answer.data) == {"MaxConcurrentTransforms": 2, "BatchStrategy": "MULTI_RECORD", "MaxPayloadInMB": 6}


def test_csv_multirecord_mini_batches_by_payload_in_input_order(server, s3):
    # 64 bytes hold two of these lines (27-31 bytes each) but not three
    options = TransformOptions(content_type="text/csv", accept="application/jsonlines", split_type="Line",
                               batch_strategy="MultiRecord", max_payload_mb=64 / 2**20, assemble_with="Line")
    report = run_local_transform(server, f"s3://{DATA}/csv/", f"s3://{DATA}/out/csv-multi", options, s3=s3,
                                 show_progress=False)

    assert report.failures == []
    assert report.outputs == [f"s3://{DATA}/out/csv-multi/{name}.out" for name in ("a.csv", "b.csv", "empty.csv")]
    assert (report.inputs, report.records, report.requests) == (3, 5, 3)  # a.csv: 2 + 1 lines, b.csv: 2
    assert 1 <= report.max_in_flight <= 2
    a = [json.loads(line) for line in read(s3, report.outputs[0]).decode().splitlines()]
    assert [r["source"] for r in a] == [f"s3://{BUCKET}/{n}" for n in ("rocket.jpg", "astronaut.png", "coffee.png")]
    b = [json.loads(line) for line in read(s3, report.outputs[1]).decode().splitlines()]
    assert [r["image_size"] for r in b] == [[451, 300], [640, 427]]
    assert read(s3, report.outputs[2]) == b""


def test_jsonlines_single_record_fails_only_the_file_with_the_bad_record(server, s3):
    options = TransformOptions(content_type="application/jsonlines", accept="application/jsonlines",
                               split_type="Line", batch_strategy="SingleRecord", assemble_with="Line")
    report = run_local_transform(server, f"s3://{DATA}/jsonl/", f"s3://{DATA}/out/jsonl-single/", options, s3=s3,
                                 show_progress=False)

    assert report.outputs == [f"s3://{DATA}/out/jsonl-single/good.jsonl.out"]
    assert keys(s3, "out/jsonl-single/") == ["out/jsonl-single/good.jsonl.out"]  # no .out for bad.jsonl
    good = [json.loads(line) for line in read(s3, report.outputs[0]).decode().splitlines()]
    assert [r["source"] for r in good] == [f"s3://{BUCKET}/rocket.jpg", f"s3://{BUCKET}/chelsea.png"]
    assert all(r["detections"] for r in good)
    (failure,) = report.failures
    assert (failure.input_uri, failure.record, failure.line, failure.status) == (f"s3://{DATA}/jsonl/bad.jsonl", 2, 2, 400)
    assert "pred_threshold" in failure.message


def test_cli_multirecord_names_the_failed_file_and_record(server, s3, capsys):
    # no --batch-strategy: the container's /execution-parameters says MultiRecord
    code = main(["transform", "--local", "--server-url", server, "--input", f"s3://{DATA}/jsonl/",
                 "--output", f"s3://{DATA}/out/jsonl-cli", "--content-type", "application/jsonlines",
                 "--accept", "application/jsonlines", "--split-type", "Line", "--assemble-with", "Line"])
    captured = capsys.readouterr()
    assert code == 1
    assert captured.out.split() == [f"s3://{DATA}/out/jsonl-cli/good.jsonl.out"]
    assert outcome("failed", f"s3://{DATA}/jsonl/bad.jsonl: record 2 (line 2): 400: ") in captured.err
    assert "MultiRecord, MaxPayloadInMB 6, MaxConcurrentTransforms 2" in captured.err
    assert keys(s3, "out/jsonl-cli/") == ["out/jsonl-cli/good.jsonl.out"]
    assert len(read(s3, captured.out.split()[0]).splitlines()) == 2


def test_split_none_sends_whole_objects(server, s3):
    options = TransformOptions(content_type="application/json", split_type="None")
    report = run_local_transform(server, f"s3://{DATA}/json/", f"s3://{DATA}/out/json", options, s3=s3,
                                 show_progress=False)
    assert report.failures == [] and report.requests == 2
    one, two = (json.loads(read(s3, uri)) for uri in report.outputs)
    assert one["source"] == f"s3://{BUCKET}/astronaut.png" and one["detections"]
    assert [r["source"] for r in two] == [f"s3://{BUCKET}/chelsea.png", f"s3://{BUCKET}/coffee.png"]


def test_a_record_over_max_payload_fails_its_file_without_a_request(server, s3, capsys):
    code = main(["transform", "--local", "--server-url", server, "--input", f"s3://{DATA}/csv/a.csv",
                 "--output", f"s3://{DATA}/out/too-big", "--content-type", "text/csv", "--split-type", "Line",
                 "--batch-strategy", "SingleRecord", "--max-payload-mb", str(20 / 2**20)])
    assert code == 1
    err = capsys.readouterr().err
    assert f"s3://{DATA}/csv/a.csv: record 1 (line 1): 26 bytes, over MaxPayloadInMB (20 bytes)" in err
    assert "0 request(s)" in err
    assert keys(s3, "out/too-big") == []


def test_bad_options_are_usage_errors(server, capsys):
    assert main(["transform", "--local", "--server-url", server, "--input", f"s3://{DATA}/csv/", "--output",
                 f"s3://{DATA}/out/x", "--max-concurrent-transforms", "30", "--max-payload-mb", "6"]) == 2
    assert "at most 100 MB" in capsys.readouterr().err
    assert main(["transform", "--local", "--input", f"s3://{DATA}/csv/", "--output", f"s3://{DATA}/out/x"]) == 2
    assert "--model-dir DIR" in capsys.readouterr().err


def test_split_and_assemble_rules():
    from smvision.deploy import batching

    records = batching.split_records(b"a\r\nbb\n\n  \nccc", "Line")
    assert [(r.number, r.line, r.data) for r in records] == [(1, 1, b"a"), (2, 2, b"bb"), (3, 5, b"ccc")]
    assert [b.body for b in batching.mini_batches(records, "Line", "MultiRecord", None)] == [b"a\nbb\nccc\n"]  # 0 MB: no limit
    assert [b.body for b in batching.mini_batches(records, "Line", "MultiRecord", 5)] == [b"a\nbb\n", b"ccc\n"]
    assert [b.body for b in batching.mini_batches(records, "Line", "SingleRecord", 5)] == [b"a", b"bb", b"ccc"]
    whole = batching.split_records(b"x" * 10, "None")
    with pytest.raises(batching.PayloadTooLarge, match="record 1 is 10 bytes"):
        batching.mini_batches(whole, "None", "MultiRecord", 9)
    assert batching.split_records(b"", "None") == [] and batching.split_records(b"\n\n", "Line") == []
    assert batching.assemble([b"[1]", b"2\n"], "Line") == b"[1]\n2\n"
    assert batching.assemble([b"[1]", b"2\n"], "None") == b"[1]2\n"
    assert batching.payload_limit(0) is None and batching.payload_limit(6) == 6 * 2**20


def test_local_model_dir_that_does_not_serve_is_a_clear_error(tmp_path, s3, capsys):
    model = tmp_path / "model"
    model.mkdir()
    args = ["transform", "--local", "--model-dir", str(model), "--input", f"s3://{DATA}/csv/",
            "--output", f"s3://{DATA}/out/never", "--no-progress"]
    assert main(args) == 1  # no code/inference.py: serve stops at once
    assert "no entry script" in capsys.readouterr().err

    (model / "code").mkdir()
    (model / "code" / "inference.py").write_text("def model_fn(model_dir):\n    raise RuntimeError('weights missing')\n")
    assert main(args) == 1  # loads and fails: /ping says so, no waiting for the timeout
    assert "the model failed to load (RuntimeError: weights missing)" in capsys.readouterr().err
    assert keys(s3, "out/never") == []


# ---- every input ends written, failed (named, with the reason) or not started ----------


def test_a_missing_output_bucket_stops_before_any_input_is_read(server, s3, capsys):
    for prefix in ("mixed/a.csv", "csv/"):  # csv/ holds an empty file, which used to be written first
        code = main(transform(server, prefix, "s3://no-such-output-bucket/out/"))
        captured = capsys.readouterr()
        assert code == 1, captured
        assert "output bucket 'no-such-output-bucket' does not exist" in captured.err
        assert "nothing was read or sent" in captured.err
        assert captured.out == ""


def test_an_unreadable_input_fails_by_name_and_the_others_go_on(server, s3, capsys):
    code = main(transform(server, "mixed/", f"s3://{DATA}/out/mixed/"))
    captured = capsys.readouterr()
    assert code == 1
    written = [f"s3://{DATA}/out/mixed/{name}.out" for name in ("a.csv", "d.csv")]
    assert captured.out.split() == written
    assert keys(s3, "out/mixed/") == [uri.removeprefix(f"s3://{DATA}/") for uri in written]
    assert "4 input(s): 2 written, 2 failed" in captured.err
    assert outcome("written", f"s3://{DATA}/mixed/a.csv -> {written[0]}") in captured.err
    assert outcome("failed", f"s3://{DATA}/mixed/b.csv: GetObject: InvalidObjectState: ") in captured.err
    assert outcome("failed", f"s3://{DATA}/mixed/c.csv: record 1 (line 1): 404: ") in captured.err
    assert outcome("written", f"s3://{DATA}/mixed/d.csv -> {written[1]}") in captured.err
    assert "smvision: error: 2 input(s) without .out: 2 failed" in captured.err


class _NoWritesS3(http.server.BaseHTTPRequestHandler):
    """moto's S3 behind a gate that refuses every PUT, as S3 does for a role that may list
    and read but not write: HeadBucket passes, PutObject is AccessDenied."""

    upstream = ""

    def _forward(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        if self.command == "PUT":
            denied = b"<Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>"
            status, headers, data = 403, {"Content-Type": "application/xml"}, denied
        else:
            answer = urllib3.request(self.command, self.upstream + self.path, body=body, headers=dict(self.headers),
                                     redirect=False, retries=False, decode_content=False)
            status, headers, data = answer.status, answer.headers, answer.data
        self.send_response(status)
        for name, value in headers.items():
            if name.lower() not in ("content-length", "transfer-encoding", "connection", "date", "server"):
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_HEAD = do_GET = do_PUT = do_POST = do_DELETE = _forward

    def log_message(self, *args) -> None:
        pass


def test_a_refused_write_fails_that_input_by_name(server, s3, s3_endpoint, monkeypatch, capsys):
    _NoWritesS3.upstream = s3_endpoint
    with HttpStub(_NoWritesS3) as gate:
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", gate.url)
        code = main(transform(server, "csv/", f"s3://{DATA}/out/refused/"))
    captured = capsys.readouterr()
    assert code == 1
    assert captured.out == ""
    for name in ("a.csv", "b.csv", "empty.csv"):
        assert outcome("failed", f"s3://{DATA}/csv/{name}: writing s3://{DATA}/out/refused/{name}.out: "
                                 "PutObject: AccessDenied: Access Denied") in captured.err
    assert "3 input(s): 0 written, 3 failed" in captured.err
    assert keys(s3, "out/refused/") == []


# ---- Ctrl-C ---------------------------------------------------------------------------

SLOW = {  # one record per request at one request at a time: b.csv keeps the server busy for seconds
    "slow/a.csv": f"{BUCKET}/chelsea.png\n".encode(),
    "slow/b.csv": "".join(f"{BUCKET}/astronaut.png\n" for _ in range(40)).encode(),
    "slow/c.csv": f"{BUCKET}/rocket.jpg\n".encode(),
}


@pytest.mark.parametrize("to_group", [True, False], ids=["ctrl-c-in-a-terminal", "sigint-to-the-cli-only"])
def test_ctrl_c_reports_every_input_and_exits_130(d0_model_dir, s3, to_group, tmp_path):
    for key, data in SLOW.items():
        s3.put_object(Bucket=DATA, Key=key, Body=data)
    out = f"out/sigint-{to_group}/"
    args = [str(BIN / "smvision"), "transform", "--local", "--model-dir", str(d0_model_dir),
            "--input", f"s3://{DATA}/slow/", "--output", f"s3://{DATA}/{out}", "--content-type", "text/csv",
            "--split-type", "Line", "--batch-strategy", "SingleRecord", "--max-concurrent-transforms", "1"]
    # a terminal's Ctrl-C signals its whole foreground process group: the CLI and the server it started
    cli = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        def first_written() -> bool:
            assert cli.poll() is None, cli.communicate()
            return keys(s3, out) == [out + "a.csv.out"]

        wait_until(first_written, 300, "a.csv.out to be written", interval=0.05)
        if to_group:
            os.killpg(cli.pid, signal.SIGINT)
        else:
            cli.send_signal(signal.SIGINT)
        stdout, stderr = cli.communicate(timeout=90)
    finally:
        if cli.poll() is None:
            os.killpg(cli.pid, signal.SIGKILL)
            cli.wait(10)
    assert cli.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert stdout.split() == [f"s3://{DATA}/{out}a.csv.out"]
    assert "3 input(s): 1 written, 1 interrupted, 1 not started" in stderr
    assert outcome("written", f"s3://{DATA}/slow/a.csv -> s3://{DATA}/{out}a.csv.out") in stderr
    assert outcome("interrupted", f"s3://{DATA}/slow/b.csv") in stderr
    assert outcome("not started", f"s3://{DATA}/slow/c.csv") in stderr
    assert re.search(r"smvision: interrupted: 2 input\(s\) without \.out", stderr), stderr
    assert keys(s3, out) == [out + "a.csv.out"]
    # nothing the command started is left running (the server was stopped, not orphaned)
    def group_gone() -> bool:
        try:
            os.killpg(cli.pid, 0)
            return False
        except ProcessLookupError:
            return True

    wait_until(group_gone, 10, "the local server to end with the command (it outlived it)", ignore=())
