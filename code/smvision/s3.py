"""Reading (and writing) objects in S3 through boto3, with an allowlist and clear 4xx errors.

boto3 honours AWS_ENDPOINT_URL / AWS_ENDPOINT_URL_S3, so the same code reads from AWS,
MinIO or a local moto server.

Inside a request (smvision.inflight), every read fits the time the request has left:
the connect and read timeouts and the number of attempts are derived from it, so an S3
endpoint that accepts connections and never answers costs at most the request's own
timeout, never botocore's 60 s read timeout times its retries.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from dataclasses import dataclass, field
from typing import Iterator

from smvision import inflight
from smvision.errors import InferenceError, bad_request, not_found, too_large
from smvision.quoting import quote

ALLOWED_BUCKETS_ENV = "SMVISION_ALLOWED_BUCKETS"
_GERUNDS = {"read": "reading", "write": "writing"}

log = logging.getLogger("smvision")

#: Timeouts a client may get (seconds); each (connect, read, attempts) is one cached client.
_LADDER = (0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0)
#: Outside a request (a script, the AWS toolkit): connect, read, attempts.
UNBOUNDED_BUDGET = (5.0, 30.0, 3)


def _floor(seconds: float) -> float:
    """The largest ladder value <= seconds (the smallest one if none is)."""
    fitting = [step for step in _LADDER if step <= seconds]
    return fitting[-1] if fitting else _LADDER[0]


def budget(remaining: float | None) -> tuple[float, float, int]:
    """(connect timeout, read timeout, attempts) for a read with `remaining` seconds left
    (None: no deadline). Worst case, attempts * (connect + read) plus botocore's backoff
    (under 1 s before the second attempt, 2 s before the third) stays within remaining."""
    if remaining is None:
        return UNBOUNDED_BUDGET
    attempts = 3 if remaining >= 15 else 2 if remaining >= 4 else 1
    backoff = {1: 0.0, 2: 1.0, 3: 3.0}[attempts]
    per_attempt = max(remaining - backoff, 0.0) / attempts
    return _floor(min(per_attempt * 0.3, 3.0)), _floor(per_attempt * 0.7), attempts


class S3Reader:
    """Reads whole objects, refusing buckets outside the allowlist and objects over a size."""

    def __init__(self, allowed_buckets: frozenset[str] | None = None, max_bytes: int = 64 << 20) -> None:
        self.allowed_buckets = allowed_buckets
        self.max_bytes = max_bytes
        self._clients: dict[tuple[float, float, int], object] = {}
        self._lock = threading.Lock()

    @property
    def client(self):
        """The client for reads outside a request."""
        return self.client_for(UNBOUNDED_BUDGET)

    def client_for(self, limits: tuple[float, float, int]):
        """One boto3 client per (connect, read, attempts), made on first use (after any
        fork), shared by threads."""
        client = self._clients.get(limits)
        if client is None:
            with self._lock:
                client = self._clients.get(limits)
                if client is None:
                    import boto3
                    from botocore.config import Config

                    connect, read, attempts = limits
                    config = Config(
                        connect_timeout=connect,
                        read_timeout=read,
                        retries={"total_max_attempts": attempts, "mode": "standard"},
                        max_pool_connections=32,
                    )
                    client = self._clients[limits] = boto3.client("s3", config=config)
        return client

    def read(self, bucket: str, key: str, request: inflight.Inflight | None = None) -> bytes:
        """The object's bytes; 403 outside the allowlist, 404 if absent, 413 if too big,
        400 for any other refusal S3 gives, 504 when the request's time runs out.

        request: the request this read belongs to (default: the one open on this
        thread); its deadline bounds the timeouts and retries."""
        return self.get(bucket, key, request).data

    def get(self, bucket: str, key: str, request: inflight.Inflight | None = None) -> S3Object:
        """The object's bytes and ETag; errors as read()."""
        with self._call(bucket, key, "read", request) as client:
            response = client.get_object(Bucket=bucket, Key=key)
            size = response.get("ContentLength") or 0
            if size > self.max_bytes:
                response["Body"].close()
                raise too_large(f"{quote(f's3://{bucket}/{key}')} is {size:,} bytes; the limit is {self.max_bytes:,}")
            return S3Object(response["Body"].read(), response.get("ETag", ""))

    def etag(self, bucket: str, key: str, request: inflight.Inflight | None = None) -> str:
        """The object's ETag from a HEAD request (no body read); errors as read()."""
        with self._call(bucket, key, "read", request) as client:
            return client.head_object(Bucket=bucket, Key=key).get("ETag", "")

    def put(self, bucket: str, key: str, data: bytes, request: inflight.Inflight | None = None) -> str:
        """Write an object (same allowlist as reads); returns its ETag."""
        with self._call(bucket, key, "write", request) as client:
            return client.put_object(Bucket=bucket, Key=key, Body=data).get("ETag", "")

    @contextlib.contextmanager
    def _call(self, bucket: str, key: str, verb: str, request: inflight.Inflight | None) -> Iterator[object]:
        """Check the allowlist and the deadline, yield a client whose timeouts fit the
        time left, and turn boto errors into 4xx / 502 / 504 InferenceErrors."""
        uri = quote(f"s3://{bucket}/{key}")
        doing = _GERUNDS[verb]
        if self.allowed_buckets is not None and bucket not in self.allowed_buckets:
            raise InferenceError(
                403, f"bucket {quote(bucket)} is not in {ALLOWED_BUCKETS_ENV} ({', '.join(sorted(self.allowed_buckets))})"
            )
        from botocore.exceptions import BotoCoreError, ClientError, ParamValidationError

        request = request if request is not None else inflight.current()
        remaining = request.remaining() if request is not None else None
        if request is not None:
            request.check(f"before {doing} {uri}")
        try:
            yield self.client_for(budget(remaining))
        except ParamValidationError as exc:
            raise bad_request(f"{uri} is not a valid S3 reference: {quote(str(exc))}") from None
        except ClientError as exc:
            raise _client_error(exc, bucket, key, verb) from None
        except BotoCoreError as exc:
            # The detail (it names the endpoint URL) goes to the log, not to the caller.
            log.warning("%s %s failed: %s", doing, uri, exc)
            if request is not None:
                request.check(f"{doing} {uri}")
            raise InferenceError(502, f"could not {verb} {uri}: S3 did not answer ({type(exc).__name__})") from None


@dataclass(frozen=True)
class S3Object:
    """An object's bytes and its ETag (which changes whenever the object does)."""

    data: bytes = field(repr=False)
    etag: str


def _client_error(exc, bucket: str, key: str, verb: str = "read") -> InferenceError:
    uri = quote(f"s3://{bucket}/{key}")
    error = exc.response.get("Error", {})
    code = str(error.get("Code", ""))
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    if code == "NoSuchBucket":
        return not_found(f"bucket {quote(bucket)} does not exist (reading {uri})")
    if code in ("NoSuchKey", "404", "NotFound") or status == 404:
        return not_found(f"{uri} does not exist: no object with key {quote(key)} in bucket {quote(bucket)}")
    if code in ("AccessDenied", "403", "Forbidden") or status == 403:
        return InferenceError(403, f"access denied {_GERUNDS[verb]} {uri}: the endpoint's role may not {verb} it")
    if code == "InvalidBucketName":
        return bad_request(f"{quote(bucket)} is not a valid bucket name")
    reason = f"{code or status}: {quote(str(error.get('Message', '')))}"
    if isinstance(status, int) and 400 <= status < 500:
        return bad_request(f"S3 refused to {verb} {uri} ({reason})")
    log.warning("S3 answered %s %s %s", reason, _GERUNDS[verb], uri)
    return InferenceError(502, f"S3 answered {code or status} to a {verb} of {uri}")
