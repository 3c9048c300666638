"""Batch transform on this machine, with SageMaker's semantics, against `smvision serve`.

Input objects under an S3 prefix are split into records and mini-batches
(smvision.deploy.batching), sent as POST /invocations to a local server (started here
with SAGEMAKER_BATCH=true and the batch variables, or one already running), with at most
MaxConcurrentTransforms requests in flight. Each input gets `<input name>.out` under the
output prefix, answers in input order, written only when every record succeeded. As
SageMaker does, GET /execution-parameters is read first and fills in the options the
caller left out.
"""

from __future__ import annotations

import json
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import urllib3

from smvision.deploy import batching
from smvision.deploy.batching import MiniBatch, PayloadTooLarge
from smvision.deploy.local_server import LocalServer
from smvision.deploy.progress import progress_bar

DEFAULT_MAX_PAYLOAD_MB = 6.0
_STRATEGY_NAMES = {"MULTI_RECORD": "MultiRecord", "SINGLE_RECORD": "SingleRecord",
                   "MultiRecord": "MultiRecord", "SingleRecord": "SingleRecord"}


@dataclass
class TransformOptions:
    """The job's options; None means: ask the container (/execution-parameters), then SageMaker's default."""

    content_type: str | None = None
    accept: str | None = None
    split_type: str = "None"
    batch_strategy: str | None = None
    max_payload_mb: float | None = None
    max_concurrent_transforms: int | None = None
    assemble_with: str = "None"

    def server_env(self) -> dict[str, str]:
        """What SageMaker sets in a batch transform container, for the options given."""
        env = {"SAGEMAKER_BATCH": "true"}
        if self.batch_strategy:
            env["SAGEMAKER_BATCH_STRATEGY"] = "MULTI_RECORD" if self.batch_strategy == "MultiRecord" else "SINGLE_RECORD"
        if self.max_payload_mb is not None:
            env["SAGEMAKER_MAX_PAYLOAD_IN_MB"] = f"{self.max_payload_mb:g}"
        if self.max_concurrent_transforms:
            env["SAGEMAKER_MAX_CONCURRENT_TRANSFORMS"] = str(self.max_concurrent_transforms)
        return env


@dataclass(frozen=True)
class Effective:
    batch_strategy: str
    max_payload_mb: float
    max_concurrent: int


@dataclass
class Failure:
    input_uri: str
    record: int | None
    line: int | None
    status: int | None
    message: str

    def __str__(self) -> str:
        where = ""
        if self.record is not None:
            where = f"record {self.record}" + (f" (line {self.line})" if self.line else "") + ": "
        status = f"{self.status}: " if self.status else ""
        return f"{self.input_uri}: {where}{status}{self.message}"


@dataclass
class TransformReport:
    inputs: int = 0
    records: int = 0
    requests: int = 0
    max_in_flight: int = 0
    outputs: list[str] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    settings: Effective | None = None


def split_s3_uri(uri: str) -> tuple[str, str]:
    if not uri.startswith("s3://"):
        raise ValueError(f"expected an s3:// URI, got {uri!r}")
    bucket, _, key = uri[5:].partition("/")
    if not bucket:
        raise ValueError(f"no bucket in {uri!r}")
    return bucket, key


def list_inputs(s3: Any, input_uri: str) -> list[tuple[str, str]]:
    """(key, name relative to the prefix's folder) of every object under the prefix, in key order."""
    bucket, prefix = split_s3_uri(input_uri)
    base = prefix[: prefix.rfind("/") + 1]
    found = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            if not item["Key"].endswith("/"):
                found.append((item["Key"], item["Key"][len(base):]))
    return sorted(found)


def execution_parameters(http: urllib3.PoolManager, url: str) -> dict[str, Any]:
    """GET /execution-parameters; {} when the container does not answer it."""
    try:
        response = http.request("GET", url + "/execution-parameters", timeout=urllib3.Timeout(connect=5, read=10))
    except urllib3.exceptions.HTTPError:
        return {}
    if response.status != 200:
        return {}
    try:
        answer = json.loads(response.data)
    except ValueError:
        return {}
    return answer if isinstance(answer, dict) else {}


def effective_settings(options: TransformOptions, container: dict[str, Any]) -> Effective:
    """Caller's options, else the container's answer, else SageMaker's defaults; checked."""
    strategy = options.batch_strategy or _STRATEGY_NAMES.get(str(container.get("BatchStrategy")), "MultiRecord")
    payload = options.max_payload_mb if options.max_payload_mb is not None else container.get("MaxPayloadInMB")
    payload = float(payload) if isinstance(payload, (int, float)) else DEFAULT_MAX_PAYLOAD_MB
    concurrent = options.max_concurrent_transforms or container.get("MaxConcurrentTransforms") or 1
    if not isinstance(concurrent, int) or concurrent < 1:
        raise ValueError(f"MaxConcurrentTransforms must be a positive integer, got {concurrent!r}")
    batching.payload_limit(payload)
    if concurrent * payload > 100:
        raise ValueError(f"MaxConcurrentTransforms x MaxPayloadInMB must be at most 100 MB, got {concurrent} x {payload:g}")
    return Effective(strategy, payload, concurrent)


_RECORD_IN_MESSAGE = re.compile(r"\brecord (\d+)\b")
_CSV_LINE_IN_MESSAGE = re.compile(r"\bCSV line (\d+)\b")


def _failed_record(batch: MiniBatch, message: str) -> tuple[int | None, int | None]:
    """The failing record of a mini-batch: the only one, or the one the server's message names."""
    if len(batch.records) == 1:
        return batch.records[0].number, batch.records[0].line
    index = None
    if match := _RECORD_IN_MESSAGE.search(message):
        index = int(match.group(1))  # the server counts records from 0 within a request
    elif match := _CSV_LINE_IN_MESSAGE.search(message):
        index = int(match.group(1)) - 1
    if index is not None and 0 <= index < len(batch.records):
        return batch.records[index].number, batch.records[index].line
    return None, None


def _error_message(status: int, data: bytes) -> str:
    text = data.decode("utf-8", "replace")
    try:
        answer = json.loads(text)
        if isinstance(answer, dict) and isinstance(answer.get("error"), str):
            return answer["error"]
    except ValueError:
        pass
    return text.strip()[:500] or f"HTTP {status}"


class _InputState:
    """One input object's mini-batches and answers, filled in by worker threads."""

    def __init__(self, uri: str, output: tuple[str, str], batches: list[MiniBatch]) -> None:
        self.uri = uri
        self.output = output
        self.batches = batches
        self.answers: list[bytes | None] = [None] * len(batches)
        self.remaining = len(batches)
        self.failure: Failure | None = None


def run_local_transform(
    server_url: str,
    input_uri: str,
    output_uri: str,
    options: TransformOptions,
    *,
    s3: Any | None = None,
    show_progress: bool = True,
    request_timeout_s: float = 600,
) -> TransformReport:
    """Transform every object under input_uri through the server at server_url."""
    import boto3

    s3 = s3 or boto3.client("s3")
    if options.split_type not in batching.SPLIT_TYPES:
        raise ValueError(f"SplitType must be one of {batching.SPLIT_TYPES}, got {options.split_type!r}")
    if options.assemble_with not in batching.ASSEMBLE_WITH:
        raise ValueError(f"AssembleWith must be one of {batching.ASSEMBLE_WITH}, got {options.assemble_with!r}")
    out_bucket, out_prefix = split_s3_uri(output_uri)
    out_prefix = out_prefix.rstrip("/") + "/" if out_prefix.strip("/") else ""
    in_bucket, _ = split_s3_uri(input_uri)
    inputs = list_inputs(s3, input_uri)
    if not inputs:
        raise ValueError(f"no input objects under {input_uri}")

    http = urllib3.PoolManager(maxsize=64, retries=False)
    settings = effective_settings(options, execution_parameters(http, server_url))
    limit = batching.payload_limit(settings.max_payload_mb)
    headers = {"Content-Type": options.content_type or "application/octet-stream"}
    if options.accept:
        headers["Accept"] = options.accept
    timeout = urllib3.Timeout(connect=10, read=request_timeout_s)
    report = TransformReport(inputs=len(inputs), settings=settings)
    lock = threading.Lock()
    slots = threading.BoundedSemaphore(settings.max_concurrent * 2)  # bounds what is read ahead
    in_flight = [0]

    files_bar = progress_bar(total=len(inputs), desc="files", unit="file", position=0, enabled=show_progress)
    records_bar = progress_bar(total=0, desc="records", unit="rec", position=1, enabled=show_progress)

    def finish(state: _InputState) -> None:
        if state.failure is None:
            body = batching.assemble([answer or b"" for answer in state.answers], options.assemble_with)
            s3.put_object(Bucket=state.output[0], Key=state.output[1], Body=body)
            with lock:
                report.outputs.append(f"s3://{state.output[0]}/{state.output[1]}")
        else:
            with lock:
                report.failures.append(state.failure)
        with lock:
            files_bar.update(1)

    def send(state: _InputState, index: int) -> None:
        try:
            if state.failure is not None:  # the object already failed: its other mini-batches are moot
                return
            batch = state.batches[index]
            with lock:
                in_flight[0] += 1
                report.max_in_flight = max(report.max_in_flight, in_flight[0])
                report.requests += 1
            try:
                response = http.request("POST", server_url + "/invocations", body=batch.body, headers=headers,
                                        timeout=timeout)
                status, data = response.status, response.data
            except urllib3.exceptions.HTTPError as exc:
                status, data = None, f"no answer from the server: {exc}".encode()
            finally:
                with lock:
                    in_flight[0] -= 1
            if status == 200:
                state.answers[index] = data
                with lock:
                    records_bar.update(len(batch.records))
            else:
                message = _error_message(status or 0, data)
                record, line = _failed_record(batch, message)
                with lock:
                    if state.failure is None:
                        state.failure = Failure(state.uri, record, line, status, message)
        finally:
            slots.release()
            with lock:
                state.remaining -= 1
                done = state.remaining == 0
            if done:
                finish(state)

    with files_bar, records_bar, ThreadPoolExecutor(settings.max_concurrent, thread_name_prefix="transform") as pool:
        for key, name in inputs:
            uri = f"s3://{in_bucket}/{key}"
            data = s3.get_object(Bucket=in_bucket, Key=key)["Body"].read()
            records = batching.split_records(data, options.split_type)
            report.records += len(records)
            records_bar.total = report.records
            records_bar.refresh()
            try:
                batches = batching.mini_batches(records, options.split_type, settings.batch_strategy, limit)
            except PayloadTooLarge as exc:
                report.failures.append(Failure(uri, exc.record.number, exc.record.line, None, exc.detail))
                files_bar.update(1)
                continue
            state = _InputState(uri, (out_bucket, out_prefix + name + ".out"), batches)
            if not batches:  # an empty object: an empty .out, as every (no) record succeeded
                finish(state)
                continue
            for index in range(len(batches)):
                slots.acquire()
                pool.submit(send, state, index)
    report.failures.sort(key=lambda failure: failure.input_uri)
    order = {f"s3://{out_bucket}/{out_prefix}{name}.out": i for i, (_, name) in enumerate(inputs)}
    report.outputs.sort(key=lambda uri: order.get(uri, len(order)))
    return report


def transform_with_local_server(
    model_dir: str, input_uri: str, output_uri: str, options: TransformOptions, *, show_progress: bool = True,
    ready_timeout_s: float = 300,
) -> TransformReport:
    """Start `smvision serve` on model_dir as a batch transform container, run, stop it."""
    with LocalServer(model_dir, env=options.server_env(), ready_timeout_s=ready_timeout_s) as server:
        return run_local_transform(server.url, input_uri, output_uri, options, show_progress=show_progress)
