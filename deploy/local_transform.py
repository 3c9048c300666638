"""Batch transform on this machine, with SageMaker's semantics, against `smvision serve`.

The output bucket is checked and the inputs listed first (plan_transform): a missing or
unreachable bucket stops the run before anything is read or sent. Input objects under the
S3 prefix are split into records and mini-batches (smvision.deploy.batching), sent as POST
/invocations to a local server (started here with SAGEMAKER_BATCH=true and the batch
variables, or one already running), with at most MaxConcurrentTransforms requests in
flight. Each input gets `<input name>.out` under the output prefix, answers in input
order, written only when every record succeeded. As SageMaker does, GET
/execution-parameters is read first and fills in the options the caller left out.

Every input ends written, failed (a read, a record or the write; the failure names it) or,
after Ctrl-C, interrupted or not started: TransformReport.outcomes().
"""

from __future__ import annotations

import json
import queue
import re
import threading
from dataclasses import dataclass, field
from typing import Any, Callable

import urllib3
from botocore.exceptions import BotoCoreError, ClientError

from smvision.deploy import batching
from smvision.deploy.aws import RETRIES, AwsError, bucket_problem, configured_region, describe_error, error_code
from smvision.deploy.batching import MiniBatch, PayloadTooLarge
from smvision.deploy.server_process import error_text, smvision_serve
from smvision.deploy.progress import Report, progress_bar, report_to_stderr

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


WRITTEN, FAILED, INTERRUPTED, NOT_STARTED = "written", "failed", "interrupted", "not started"
STATES = (WRITTEN, FAILED, INTERRUPTED, NOT_STARTED)


class TransformError(AwsError):
    """The transform cannot start (a bucket missing or out of reach); nothing was read or sent."""


@dataclass(frozen=True)
class InputOutcome:
    """How one input ended: WRITTEN (detail: its .out), FAILED (detail: the failure, which
    names the input), INTERRUPTED (Ctrl-C after it was started) or NOT_STARTED."""

    input_uri: str
    state: str
    detail: str = ""

    def row(self) -> str:
        """Its line in the summary table."""
        text = {WRITTEN: f"{self.input_uri} -> {self.detail}", FAILED: self.detail}.get(self.state, self.input_uri)
        return f"  {self.state:<11}  {text}"


@dataclass
class TransformReport:
    input_uris: list[str] = field(default_factory=list)  # every input, in key order
    records: int = 0
    requests: int = 0
    max_in_flight: int = 0
    written: dict[str, str] = field(default_factory=dict)  # input URI -> its .out URI
    failures: list[Failure] = field(default_factory=list)
    started: set[str] = field(default_factory=set)  # inputs whose reading began
    settings: Effective | None = None
    interrupted: bool = False  # Ctrl-C: nothing more was sent

    @property
    def inputs(self) -> int:
        return len(self.input_uris)

    @property
    def outputs(self) -> list[str]:
        """The .out objects written, in input order."""
        return [self.written[uri] for uri in self.input_uris if uri in self.written]

    def outcomes(self) -> list[InputOutcome]:
        """One outcome per input, in input order."""
        failed = {failure.input_uri: failure for failure in self.failures}
        rows = []
        for uri in self.input_uris:
            if uri in self.written:
                rows.append(InputOutcome(uri, WRITTEN, self.written[uri]))
            elif uri in failed:
                rows.append(InputOutcome(uri, FAILED, str(failed[uri])))
            else:
                rows.append(InputOutcome(uri, INTERRUPTED if uri in self.started else NOT_STARTED))
        return rows

    def counts(self) -> dict[str, int]:
        """Inputs per state, in STATES order."""
        states = [outcome.state for outcome in self.outcomes()]
        return {state: states.count(state) for state in STATES}

    def summary(self) -> list[str]:
        """'N input(s): W written, F failed, ...' and a row per input."""
        counts = self.counts()
        others = [f"{n} {state}" for state, n in counts.items() if n and state != WRITTEN]
        parts = [f"{counts[WRITTEN]} {WRITTEN}", *others]
        return [f"{self.inputs} input(s): {', '.join(parts)}"] + [outcome.row() for outcome in self.outcomes()]

    def missing(self) -> str:
        """'2 input(s) without .out: 1 failed, 1 not started', or '' when every input was written."""
        counts = {state: n for state, n in self.counts().items() if n and state != WRITTEN}
        if not counts:
            return ""
        states = ", ".join(f"{n} {state}" for state, n in counts.items())
        return f"{sum(counts.values())} input(s) without .out: {states}"


@dataclass(frozen=True)
class TransformPlan:
    """What a run will do, checked before any input is read: its inputs and where answers go."""

    in_bucket: str
    inputs: list[tuple[str, str]]  # (key, name under the input prefix's folder), in key order
    out_bucket: str
    out_prefix: str  # '' or ending in /

    def input_uri(self, key: str) -> str:
        return f"s3://{self.in_bucket}/{key}"

    def output(self, name: str) -> tuple[str, str]:
        """(bucket, key) of an input's .out."""
        return self.out_bucket, f"{self.out_prefix}{name}.out"

    def new_report(self) -> TransformReport:
        return TransformReport(input_uris=[self.input_uri(key) for key, _ in self.inputs])


def split_s3_uri(uri: str) -> tuple[str, str]:
    if not uri.startswith("s3://"):
        raise ValueError(f"expected an s3:// URI, got {uri!r}")
    bucket, _, key = uri[5:].partition("/")
    if not bucket:
        raise ValueError(f"no bucket in {uri!r}")
    return bucket, key


def list_inputs(s3: Any, input_uri: str) -> list[tuple[str, str]]:
    """(key, name relative to the prefix's folder) of every object under the prefix, in key order.

    TransformError when the bucket is missing or may not be listed."""
    bucket, prefix = split_s3_uri(input_uri)
    base = prefix[: prefix.rfind("/") + 1]
    found = []
    try:
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                if not item["Key"].endswith("/"):
                    found.append((item["Key"], item["Key"][len(base):]))
    except ClientError as exc:
        problem = bucket_problem(exc, bucket, "input bucket", "s3:ListBucket") or (
            f"listing {input_uri}: {describe_error(exc)}")
        raise TransformError(f"{problem}; nothing was read or sent") from None
    return sorted(found)


def check_output_bucket(s3: Any, bucket: str) -> None:
    """HeadBucket on the output bucket; TransformError when it is missing or out of reach."""
    try:
        s3.head_bucket(Bucket=bucket)
    except ClientError as exc:
        problem = bucket_problem(exc, bucket, "output bucket", "s3:ListBucket and s3:PutObject") or (
            f"output bucket {bucket!r}: {describe_error(exc)}")
        raise TransformError(f"{problem}; nothing was read or sent") from None


def plan_transform(s3: Any, input_uri: str, output_uri: str, options: TransformOptions) -> TransformPlan:
    """Check the options and the output bucket, then list the inputs (none read yet)."""
    if options.split_type not in batching.SPLIT_TYPES:
        raise ValueError(f"SplitType must be one of {batching.SPLIT_TYPES}, got {options.split_type!r}")
    if options.assemble_with not in batching.ASSEMBLE_WITH:
        raise ValueError(f"AssembleWith must be one of {batching.ASSEMBLE_WITH}, got {options.assemble_with!r}")
    out_bucket, out_prefix = split_s3_uri(output_uri)
    in_bucket, _ = split_s3_uri(input_uri)
    check_output_bucket(s3, out_bucket)
    inputs = list_inputs(s3, input_uri)
    if not inputs:
        raise ValueError(f"no input objects under {input_uri}")
    return TransformPlan(in_bucket, inputs, out_bucket, out_prefix.rstrip("/") + "/" if out_prefix.strip("/") else "")


def s3_client(region: str | None = None) -> Any:
    """The S3 client a transform reads and writes with: region (default: the configured one),
    standard retries."""
    import boto3

    return boto3.client("s3", region_name=region or configured_region(), config=RETRIES)


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


def _read_failure(uri: str, exc: Exception) -> Failure:
    """Why an input could not be read, with what to do for an archived object."""
    message = describe_error(exc)
    if error_code(exc) == "InvalidObjectState":
        storage = (getattr(exc, "response", None) or {}).get("Error", {}).get("StorageClass") or "archived"
        message += f" ({storage}: restore the object first)"
    return Failure(uri, None, None, None, message)


class _InputState:
    """One input object's mini-batches and answers, filled in by worker threads."""

    def __init__(self, uri: str, output: tuple[str, str], batches: list[MiniBatch]) -> None:
        self.uri = uri
        self.output = output
        self.batches = batches
        self.answers: list[bytes | None] = [None] * len(batches)
        self.remaining = len(batches)
        self.failure: Failure | None = None

    @property
    def output_uri(self) -> str:
        return f"s3://{self.output[0]}/{self.output[1]}"


class _Workers:
    """count daemon threads running submitted calls in order; abandon() drops the calls not
    yet begun (a daemon thread blocked on a request does not hold up the exit)."""

    def __init__(self, count: int) -> None:
        self._jobs: queue.Queue[tuple[Callable[..., None], tuple[Any, ...]] | None] = queue.Queue()
        self._threads = [threading.Thread(target=self._loop, name=f"transform-{i}", daemon=True) for i in range(count)]
        for thread in self._threads:
            thread.start()

    def _loop(self) -> None:
        while (job := self._jobs.get()) is not None:
            job[0](*job[1])

    def submit(self, call: Callable[..., None], *args: Any) -> None:
        self._jobs.put((call, args))

    def join(self) -> None:
        """Run every call submitted, then end the threads."""
        for _ in self._threads:
            self._jobs.put(None)
        for thread in self._threads:
            thread.join()

    def abandon(self) -> None:
        while True:
            try:
                self._jobs.get_nowait()
            except queue.Empty:
                return


class _Run:
    """One transform in progress: reads inputs in the main thread, sends their mini-batches
    from worker threads, writes each .out when its last answer came; Ctrl-C stops it."""

    def __init__(self, server_url: str, plan: TransformPlan, options: TransformOptions, s3: Any,
                 report: TransformReport, request_timeout_s: float, show_progress: bool) -> None:
        self.url = server_url + "/invocations"
        self.plan = plan
        self.options = options
        self.s3 = s3
        self.report = report
        self.settings = report.settings
        self.limit = batching.payload_limit(self.settings.max_payload_mb)
        self.http = urllib3.PoolManager(maxsize=64, retries=False)
        self.headers = {"Content-Type": options.content_type or "application/octet-stream"}
        if options.accept:
            self.headers["Accept"] = options.accept
        self.timeout = urllib3.Timeout(connect=10, read=request_timeout_s)
        self.lock = threading.Lock()
        self.writes_done = threading.Condition(self.lock)
        self.writing = 0  # .out uploads under way
        self.stopping = False
        self.slots = threading.BoundedSemaphore(self.settings.max_concurrent * 2)  # bounds what is read ahead
        self.in_flight = 0
        self.files_bar = progress_bar(total=len(plan.inputs), desc="files", unit="file", position=0,
                                      enabled=show_progress)
        self.records_bar = progress_bar(total=0, desc="records", unit="rec", position=1, enabled=show_progress)

    def run(self, report_line: Report) -> None:
        """Every input, in key order; on Ctrl-C, stop sending and let .out uploads under way end."""
        workers = _Workers(self.settings.max_concurrent)
        with self.files_bar, self.records_bar:
            try:
                for key, name in self.plan.inputs:
                    self.start(key, name, workers)
                workers.join()
            except KeyboardInterrupt:
                report_line("smvision: interrupted: sending nothing more; waiting for .out uploads under way")
                self.stop(workers)

    def stop(self, workers: _Workers, wait_s: float = 60) -> None:
        """Send nothing more; wait (up to wait_s, or a second Ctrl-C) for uploads under way."""
        with self.lock:
            self.stopping = True
        self.report.interrupted = True
        workers.abandon()
        try:
            with self.writes_done:
                self.writes_done.wait_for(lambda: self.writing == 0, timeout=wait_s)
        except KeyboardInterrupt:  # an upload not waited for: its input stays interrupted
            pass

    def start(self, key: str, name: str, workers: _Workers) -> None:
        """Read one input, split it, and queue its mini-batches (or settle it at once)."""
        uri = self.plan.input_uri(key)
        with self.lock:
            self.report.started.add(uri)
        try:
            data = self.s3.get_object(Bucket=self.plan.in_bucket, Key=key)["Body"].read()
        except (ClientError, BotoCoreError) as exc:
            self.settle(uri, _read_failure(uri, exc))
            return
        records = batching.split_records(data, self.options.split_type)
        with self.lock:
            self.report.records += len(records)
            self.records_bar.total = self.report.records
            self.records_bar.refresh()
        try:
            batches = batching.mini_batches(records, self.options.split_type, self.settings.batch_strategy, self.limit)
        except PayloadTooLarge as exc:
            self.settle(uri, Failure(uri, exc.record.number, exc.record.line, None, exc.detail))
            return
        state = _InputState(uri, self.plan.output(name), batches)
        if not batches:  # an empty object: an empty .out, as every (no) record succeeded
            self.finish(state)
            return
        for index in range(len(batches)):
            self.slots.acquire()
            workers.submit(self.send, state, index)

    def send(self, state: _InputState, index: int) -> None:
        """POST one mini-batch (worker thread); the input's last answer writes its .out."""
        try:
            if state.failure is None and not self.stopping:  # after a failure its other mini-batches are moot
                status, data = self.post(state.batches[index].body)
                if not self.stopping:  # after Ctrl-C answers still coming in are dropped
                    self.answer(state, index, status, data)
        except Exception as exc:  # anything unforeseen fails this input, by name, instead of vanishing
            with self.lock:
                state.failure = state.failure or Failure(state.uri, None, None, None, f"{type(exc).__name__}: {exc}")
        finally:
            self.slots.release()
            with self.lock:
                state.remaining -= 1
                done = state.remaining == 0 and not self.stopping
            if done:
                self.finish(state)

    def post(self, body: bytes) -> tuple[int | None, bytes]:
        with self.lock:
            self.in_flight += 1
            self.report.max_in_flight = max(self.report.max_in_flight, self.in_flight)
            self.report.requests += 1
        try:
            response = self.http.request("POST", self.url, body=body, headers=self.headers, timeout=self.timeout)
            return response.status, response.data
        except urllib3.exceptions.HTTPError as exc:
            return None, f"no answer from the server: {exc}".encode()
        finally:
            with self.lock:
                self.in_flight -= 1

    def answer(self, state: _InputState, index: int, status: int | None, data: bytes) -> None:
        batch = state.batches[index]
        if status == 200:
            state.answers[index] = data
            with self.lock:
                self.records_bar.update(len(batch.records))
            return
        message = error_text(status or 0, data)
        record, line = _failed_record(batch, message)
        with self.lock:
            if state.failure is None:
                state.failure = Failure(state.uri, record, line, status, message)

    def finish(self, state: _InputState) -> None:
        """Write the input's .out when all its records succeeded; settle it either way.
        After Ctrl-C nothing new is written; an upload under way ends and is counted."""
        if state.failure is not None:
            self.settle(state.uri, state.failure)
            return
        with self.lock:
            if self.stopping:
                return
            self.writing += 1
        outcome: Failure | str | None = None  # None: the upload itself was interrupted
        try:
            outcome = self.put(state)
        finally:
            with self.writes_done:
                if outcome is not None:
                    self._record(state.uri, outcome)
                self.writing -= 1
                self.writes_done.notify_all()

    def put(self, state: _InputState) -> Failure | str:
        """Upload the .out; its URI, or the failure naming the input and the .out."""
        body = batching.assemble([answer or b"" for answer in state.answers], self.options.assemble_with)
        try:
            self.s3.put_object(Bucket=state.output[0], Key=state.output[1], Body=body)
        except Exception as exc:  # ClientError, BotoCoreError, or anything else: the input failed, by name
            return Failure(state.uri, None, None, None, f"writing {state.output_uri}: {describe_error(exc)}")
        return state.output_uri

    def settle(self, uri: str, outcome: Failure | str) -> None:
        """Record an input's end, unless Ctrl-C came first (the input is then interrupted)."""
        with self.lock:
            if not self.stopping:
                self._record(uri, outcome)

    def _record(self, uri: str, outcome: Failure | str) -> None:
        """The .out URI written, or the failure (with self.lock held)."""
        if isinstance(outcome, Failure):
            self.report.failures.append(outcome)
        else:
            self.report.written[uri] = outcome
        self.files_bar.update(1)


def execute_plan(
    server_url: str,
    plan: TransformPlan,
    options: TransformOptions,
    s3: Any,
    *,
    show_progress: bool = True,
    request_timeout_s: float = 600,
    report_line: Report = report_to_stderr,
) -> TransformReport:
    """Transform the plan's inputs through the server at server_url; Ctrl-C returns the
    report so far (interrupted)."""
    report = plan.new_report()
    try:
        http = urllib3.PoolManager(retries=False)
        report.settings = effective_settings(options, execution_parameters(http, server_url))
    except KeyboardInterrupt:
        report.interrupted = True
        return report
    _Run(server_url, plan, options, s3, report, request_timeout_s, show_progress).run(report_line)
    report.failures.sort(key=lambda failure: failure.input_uri)
    return report


def run_local_transform(
    server_url: str,
    input_uri: str,
    output_uri: str,
    options: TransformOptions,
    *,
    s3: Any | None = None,
    region: str | None = None,
    show_progress: bool = True,
    request_timeout_s: float = 600,
    report_line: Report = report_to_stderr,
) -> TransformReport:
    """Transform every object under input_uri through the server at server_url."""
    s3 = s3 or s3_client(region)
    plan = plan_transform(s3, input_uri, output_uri, options)
    return execute_plan(server_url, plan, options, s3, show_progress=show_progress,
                        request_timeout_s=request_timeout_s, report_line=report_line)


def transform_with_local_server(
    model_dir: str, input_uri: str, output_uri: str, options: TransformOptions, *, show_progress: bool = True,
    ready_timeout_s: float = 300, region: str | None = None, report_line: Report = report_to_stderr,
) -> TransformReport:
    """Check the buckets and list the inputs, start `smvision serve` on model_dir as a batch
    transform container, run, stop it. Ctrl-C stops it too and returns the report so far."""
    s3 = s3_client(region)
    plan = plan_transform(s3, input_uri, output_uri, options)
    env = options.server_env()
    if region:  # as SageMaker sets them in its containers
        env.update(AWS_REGION=region, AWS_DEFAULT_REGION=region)
    server = smvision_serve(model_dir, env=env, ready_timeout_s=ready_timeout_s)
    report = plan.new_report()
    try:
        with server:
            report = execute_plan(server.url, plan, options, s3, show_progress=show_progress, report_line=report_line)
    except KeyboardInterrupt:  # while the server started, or a second Ctrl-C while it stopped: end it now
        server.stop(timeout_s=1)
        report.interrupted = True
    return report
