"""Reading image bytes from S3 through boto3, with an allowlist and clear 4xx errors.

boto3 honours AWS_ENDPOINT_URL / AWS_ENDPOINT_URL_S3, so the same code reads from AWS,
MinIO or a local moto server.
"""

from __future__ import annotations

import contextlib
import os
import threading
from dataclasses import dataclass, field
from typing import Iterator

from smvision.errors import InferenceError, bad_request, not_found, too_large

ALLOWED_BUCKETS_ENV = "SMVISION_ALLOWED_BUCKETS"


def allowed_buckets_from_env() -> frozenset[str] | None:
    """SMVISION_ALLOWED_BUCKETS='a,b' -> {'a', 'b'}; unset or empty -> None (any bucket)."""
    raw = os.environ.get(ALLOWED_BUCKETS_ENV, "")
    names = frozenset(name.strip() for name in raw.split(",") if name.strip())
    return names or None


class S3Reader:
    """Reads whole objects, refusing buckets outside the allowlist and objects over a size."""

    def __init__(self, allowed_buckets: frozenset[str] | None = None, max_bytes: int = 64 << 20) -> None:
        self.allowed_buckets = allowed_buckets
        self.max_bytes = max_bytes
        self._client = None
        self._lock = threading.Lock()

    @property
    def client(self):
        """One boto3 client, made on first use (after any fork), shared by threads."""
        if self._client is None:
            with self._lock:
                if self._client is None:
                    import boto3
                    from botocore.config import Config

                    config = Config(retries={"max_attempts": 4, "mode": "standard"}, max_pool_connections=32)
                    self._client = boto3.client("s3", config=config)
        return self._client

    def read(self, bucket: str, key: str) -> bytes:
        """The object's bytes; 403 outside the allowlist, 404 if absent, 413 if too big."""
        return self.get(bucket, key).data

    def get(self, bucket: str, key: str) -> S3Object:
        """The object's bytes and ETag; errors as read()."""
        uri = f"s3://{bucket}/{key}"
        with self._errors(bucket, key, "read"):
            response = self.client.get_object(Bucket=bucket, Key=key)
            size = response.get("ContentLength") or 0
            if size > self.max_bytes:
                response["Body"].close()
                raise too_large(f"{uri} is {size:,} bytes; the limit is {self.max_bytes:,}")
            return S3Object(response["Body"].read(), response.get("ETag", ""))

    def etag(self, bucket: str, key: str) -> str:
        """The object's ETag from a HEAD request (no body read); errors as read()."""
        with self._errors(bucket, key, "read"):
            return self.client.head_object(Bucket=bucket, Key=key).get("ETag", "")

    def put(self, bucket: str, key: str, data: bytes) -> str:
        """Write an object (same allowlist as reads); returns its ETag."""
        with self._errors(bucket, key, "write"):
            return self.client.put_object(Bucket=bucket, Key=key, Body=data).get("ETag", "")

    @contextlib.contextmanager
    def _errors(self, bucket: str, key: str, verb: str) -> Iterator[None]:
        """Check the allowlist, then turn boto errors into 4xx/502 InferenceErrors."""
        uri = f"s3://{bucket}/{key}"
        if self.allowed_buckets is not None and bucket not in self.allowed_buckets:
            raise InferenceError(
                403, f"bucket {bucket!r} is not in {ALLOWED_BUCKETS_ENV} ({', '.join(sorted(self.allowed_buckets))})"
            )
        from botocore.exceptions import BotoCoreError, ClientError, ParamValidationError

        try:
            yield
        except ParamValidationError as exc:
            raise bad_request(f"{uri} is not a valid S3 reference: {exc}") from None
        except ClientError as exc:
            raise _client_error(exc, bucket, key) from None
        except BotoCoreError as exc:
            raise InferenceError(502, f"could not {verb} {uri}: {exc}") from None


@dataclass(frozen=True)
class S3Object:
    """An object's bytes and its ETag (which changes whenever the object does)."""

    data: bytes = field(repr=False)
    etag: str


def _client_error(exc, bucket: str, key: str) -> InferenceError:
    uri = f"s3://{bucket}/{key}"
    error = exc.response.get("Error", {})
    code = str(error.get("Code", ""))
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    if code == "NoSuchBucket":
        return not_found(f"bucket {bucket!r} does not exist (reading {uri})")
    if code in ("NoSuchKey", "404", "NotFound") or status == 404:
        return not_found(f"{uri} does not exist: no object with key {key!r} in bucket {bucket!r}")
    if code in ("AccessDenied", "403", "Forbidden") or status == 403:
        return InferenceError(403, f"access denied reading {uri}: the endpoint's role may not read it")
    if code == "InvalidBucketName":
        return bad_request(f"{bucket!r} is not a valid bucket name")
    return InferenceError(502, f"S3 answered {code or status} reading {uri}: {error.get('Message', '')}")
