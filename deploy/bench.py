"""`smvision bench`: N requests at concurrency C against a local server or a real endpoint.

Reports requests, requests/s and images/s, p50/p95/p99 latency (smvision.deploy.stats),
errors by status, and the server's own stage times from its W3C Server-Timing header
(`input;dur=3.1, predict;dur=180.2, output;dur=0.4`, plus whatever stages a kind adds).
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import urllib3
from botocore.exceptions import BotoCoreError, ClientError

from smvision.deploy.aws import describe_error, error_code
from smvision.deploy.server_process import error_text
from smvision.deploy.stats import percentile

ERROR_CHARS = 300  # of an error message kept per status


@dataclass(frozen=True)
class Outcome:
    status: int  # HTTP status the model gave (200, or the container's original status); 0: no answer
    server_timing: str | None = None
    error: str | None = None  # why it failed: the server's message, or why there was no answer


Send = Callable[[bytes], Outcome]

_PARAM = re.compile(r'\s*([!#$%&\'*+\-.^_`|~0-9A-Za-z]+)\s*(?:=\s*("(?:[^"\\]|\\.)*"|[^;,]*))?\s*')


def parse_server_timing(header: str | None) -> dict[str, float]:
    """Server-Timing -> {metric name: duration in ms}; metrics without dur are left out,
    repeated names add up, malformed entries are skipped."""
    stages: dict[str, float] = {}
    if not header:
        return stages
    for entry in _split_outside_quotes(header, ","):
        parts = _split_outside_quotes(entry, ";")
        name = parts[0].strip()
        if not name or not re.fullmatch(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+", name):
            continue
        for param in parts[1:]:
            match = _PARAM.fullmatch(param)
            if match and match.group(1).lower() == "dur" and match.group(2):
                try:
                    stages[name] = stages.get(name, 0.0) + float(match.group(2).strip('"'))
                except ValueError:
                    pass
                break
    return stages


def _split_outside_quotes(text: str, separator: str) -> list[str]:
    parts, current, quoted, escaped = [], [], False, False
    for char in text:
        if escaped:
            escaped = False
        elif char == "\\" and quoted:
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == separator and not quoted:
            parts.append("".join(current))
            current = []
            continue
        current.append(char)
    parts.append("".join(current))
    return parts


def count_records(body: bytes, content_type: str) -> int:
    """Images one request carries, by the request contract: lines, array elements, or 1."""
    media = content_type.split(";")[0].strip().lower()
    if media in ("text/csv", "application/jsonlines", "application/x-jsonlines"):
        return sum(1 for line in body.splitlines() if line.strip())
    if media == "application/json":
        try:
            document = json.loads(body)
        except ValueError:
            return 1
        return len(document) if isinstance(document, list) else 1
    return 1


def http_sender(url: str, content_type: str, accept: str | None = None, timeout_s: float = 120) -> Send:
    """POST bodies to a server's /invocations (url may name /invocations itself)."""
    target = url.rstrip("/")
    if not target.endswith("/invocations"):
        target += "/invocations"
    http = urllib3.PoolManager(maxsize=256, retries=False)
    headers = {"Content-Type": content_type}
    if accept:
        headers["Accept"] = accept
    timeout = urllib3.Timeout(connect=10, read=timeout_s)

    def send(body: bytes) -> Outcome:
        try:
            response = http.request("POST", target, body=body, headers=headers, timeout=timeout)
        except urllib3.exceptions.HTTPError as exc:
            return Outcome(0, error=str(exc)[:ERROR_CHARS])
        error = None if 200 <= response.status < 300 else error_text(response.status, response.data)[:ERROR_CHARS]
        return Outcome(response.status, response.headers.get("Server-Timing"), error)

    return send


def endpoint_sender(runtime: Any, endpoint: str, content_type: str, accept: str | None = None) -> Send:
    """InvokeEndpoint; a ModelError counts under the container's original status."""
    extra = {"Accept": accept} if accept else {}

    def send(body: bytes) -> Outcome:
        try:
            response = runtime.invoke_endpoint(EndpointName=endpoint, Body=body, ContentType=content_type, **extra)
            response["Body"].read()
        except ClientError as exc:
            if error_code(exc) == "ModelError":
                message = str(exc.response.get("OriginalMessage") or describe_error(exc))
                return Outcome(int(exc.response.get("OriginalStatusCode") or 0), error=message[:ERROR_CHARS])
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
            return Outcome(status, error=describe_error(exc)[:ERROR_CHARS])
        except BotoCoreError as exc:  # no answer: connection refused, timeout
            return Outcome(0, error=str(exc)[:ERROR_CHARS])
        headers = response.get("ResponseMetadata", {}).get("HTTPHeaders", {})
        return Outcome(200, headers.get("server-timing"))

    return send


@dataclass
class BenchResult:
    requests: int
    concurrency: int
    seconds: float
    ok: int
    images: int
    latencies_ms: list[float]
    errors: dict[int, int]
    stages_ms: dict[str, float] = field(default_factory=dict)  # mean per answered request
    first_error: dict[int, str] = field(default_factory=dict)  # status -> the first error message seen

    @property
    def has_rate(self) -> bool:
        """A rate means something only when some request was answered (2xx)."""
        return self.ok > 0 and self.seconds > 0

    def summary(self) -> dict[str, Any]:
        lat = self.latencies_ms
        return {
            "requests": self.requests,
            "concurrency": self.concurrency,
            "ok": self.ok,
            "seconds": round(self.seconds, 3),
            "requests_per_s": round(self.requests / self.seconds, 3) if self.has_rate else None,
            "images_per_s": round(self.images / self.seconds, 3) if self.has_rate else None,
            "p50_ms": round(percentile(lat, 0.5), 2) if lat else None,
            "p95_ms": round(percentile(lat, 0.95), 2) if lat else None,
            "p99_ms": round(percentile(lat, 0.99), 2) if lat else None,
            "errors": {str(status): count for status, count in sorted(self.errors.items())},
            "first_error": {str(status): message for status, message in sorted(self.first_error.items())},
            "server_stages_ms": {name: round(value, 2) for name, value in self.stages_ms.items()},
        }


def run_bench(send: Send, bodies: Sequence[bytes], images: Sequence[int], requests: int, concurrency: int,
              warmup: int = 1) -> BenchResult:
    """Send requests bodies (cycling) with concurrency in flight; warmup calls are not counted.

    Latency percentiles and images/s count answered (2xx) requests only.
    """
    if requests < 1 or concurrency < 1:
        raise ValueError("requests and concurrency must be at least 1")
    if not bodies or len(bodies) != len(images):
        raise ValueError("give at least one body (and its image count)")
    for index in range(warmup):
        send(bodies[index % len(bodies)])
    lock = threading.Lock()
    latencies: list[float] = []
    errors: Counter[int] = Counter()
    first_error: dict[int, str] = {}
    stage_sums: dict[str, float] = defaultdict(float)
    timed = [0]
    done_images = [0]

    def one(index: int) -> None:
        body = bodies[index % len(bodies)]
        started = time.perf_counter()
        outcome = send(body)
        elapsed_ms = (time.perf_counter() - started) * 1000
        stages = parse_server_timing(outcome.server_timing)
        with lock:
            if 200 <= outcome.status < 300:
                latencies.append(elapsed_ms)
                done_images[0] += images[index % len(bodies)]
            else:
                errors[outcome.status] += 1
                first_error.setdefault(outcome.status, outcome.error or "")
            if stages:
                timed[0] += 1
                for name, value in stages.items():
                    stage_sums[name] += value

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency, thread_name_prefix="bench") as pool:
        list(pool.map(one, range(requests)))
    seconds = time.perf_counter() - started
    stages_ms = {name: total / timed[0] for name, total in stage_sums.items()} if timed[0] else {}
    return BenchResult(requests, concurrency, seconds, len(latencies), done_images[0], latencies, dict(errors), stages_ms,
                       first_error)


def format_result(result: BenchResult, target: str) -> str:
    """The human-readable report `smvision bench` prints."""
    s = result.summary()
    rate = (f"{s['requests_per_s']:.2f} requests/s, {s['images_per_s']:.2f} images/s" if result.has_rate
            else "no rate: no request was answered")
    lines = [
        f"target      {target}",
        f"requests    {s['requests']} at concurrency {s['concurrency']} in {s['seconds']:.2f} s: {rate}",
    ]
    if result.latencies_ms:
        lines.append(f"latency ms  p50 {s['p50_ms']:.1f}  p95 {s['p95_ms']:.1f}  p99 {s['p99_ms']:.1f}  ({s['ok']} answered)")
    errors = [f"{status_name(status)}: {count}" + (f" (first: {result.first_error[status]})"
                                                     if result.first_error.get(status) else "")
              for status, count in sorted(result.errors.items())]
    lines.append(f"errors      {'; '.join(errors) or 'none'}")
    if result.stages_ms:
        stages = "  ".join(f"{name} {value:.1f}" for name, value in result.stages_ms.items())
        lines.append(f"server ms   {stages}  (Server-Timing, mean per request)")
    return "\n".join(lines)


def status_name(status: int) -> str:
    """How a status reads in the report: the number, or 'no answer' for 0."""
    return str(status) if status else "no answer"


def all_failed(result: BenchResult) -> str:
    """'every request failed (no answer: 3)' when no request was answered, else ''."""
    if result.ok:
        return ""
    counts = ", ".join(f"{status_name(status)}: {count}" for status, count in sorted(result.errors.items()))
    return f"every request failed ({counts})"
