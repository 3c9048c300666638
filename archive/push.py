"""Upload model.tar.gz to s3://B/P/<env>/<UTC timestamp>/model.tar.gz.

boto3's transfer manager does the work (multipart above a threshold, parts in parallel,
retries); the manifest's sha256 and the model kind go along as object metadata, so an
object in S3 can be traced back to the archive that was built.
"""

from __future__ import annotations

import hashlib
import json
import tarfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import boto3
from boto3.exceptions import S3UploadFailedError
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

from smvision.deploy.aws import bucket_problem, configured_region, error_code
from smvision.deploy.progress import progress_bar
from smvision.manifest import MANIFEST_NAME

ENVIRONMENTS = ("dev", "staging", "prod")
OBJECT_NAME = "model.tar.gz"
MiB = 1024 * 1024


class PushError(RuntimeError):
    """The archive could not be pushed; the message says why in words."""


@dataclass(frozen=True)
class PushResult:
    uri: str
    manifest_sha256: str
    kind: str
    size: int


def read_manifest_bytes(archive: Path) -> bytes:
    """manifest.json's bytes, read by streaming the tarball only up to that member."""
    try:
        with tarfile.open(archive, "r|gz") as tar:
            for member in tar:
                if member.name.lstrip("./") == MANIFEST_NAME and member.isfile():
                    handle = tar.extractfile(member)
                    if handle is not None:
                        return handle.read()
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise PushError(f"{archive} is not a readable model.tar.gz: {exc}") from None
    raise PushError(f"{archive} has no {MANIFEST_NAME}: build it with `smvision archive build`")


def utc_stamp(now: datetime | None = None) -> str:
    """UTC time in ISO 8601 basic format, e.g. 20261126T131409Z (sorts as time does)."""
    return (now or datetime.now(timezone.utc)).strftime("%Y%m%dT%H%M%SZ")


def destination_key(prefix: str, env: str, stamp: str) -> str:
    """P/<env>/<stamp>/model.tar.gz (an empty prefix puts <env> at the bucket root)."""
    if env not in ENVIRONMENTS:
        raise PushError(f"--env must be one of {', '.join(ENVIRONMENTS)}, got {env!r}")
    parts = [part for part in prefix.strip("/").split("/") if part] + [env, stamp, OBJECT_NAME]
    return "/".join(parts)


def _s3_error(exc: ClientError, bucket: str) -> PushError:
    problem = bucket_problem(exc, bucket, "bucket", "s3:PutObject")
    if problem:
        return PushError(problem)
    code = error_code(exc) or exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return PushError(f"S3 refused the upload to bucket {bucket!r}: {code}: {exc}")


def push_archive(
    archive: str | Path,
    bucket: str,
    prefix: str,
    env: str,
    *,
    multipart_threshold: int = 64 * MiB,
    chunk_size: int = 64 * MiB,
    max_concurrency: int = 8,
    show_progress: bool = True,
    now: datetime | None = None,
    region: str | None = None,
) -> PushResult:
    """Upload archive and return where it went (region: the S3 client's; default: the
    configured one). Raises PushError with a clear message."""
    archive = Path(archive)
    if not archive.is_file():
        raise PushError(f"{archive} does not exist")
    manifest_bytes = read_manifest_bytes(archive)
    try:
        kind = str(json.loads(manifest_bytes).get("kind", "unknown"))
    except (ValueError, AttributeError):
        raise PushError(f"{archive}: {MANIFEST_NAME} is not valid JSON") from None
    manifest_sha256 = hashlib.sha256(manifest_bytes).hexdigest()
    key = destination_key(prefix, env, utc_stamp(now))
    size = archive.stat().st_size

    retries = Config(retries={"mode": "standard", "max_attempts": 10})
    s3 = boto3.client("s3", region_name=region or configured_region(), config=retries)
    transfer = TransferConfig(
        multipart_threshold=multipart_threshold, multipart_chunksize=chunk_size, max_concurrency=max_concurrency
    )
    extra = {
        "ContentType": "application/gzip",
        "Metadata": {"smvision-manifest-sha256": manifest_sha256, "smvision-kind": kind, "smvision-env": env},
    }
    try:
        s3.head_bucket(Bucket=bucket)
        with progress_bar(total=size, unit="B", unit_scale=True, desc=f"push {archive.name}", enabled=show_progress) as bar:
            s3.upload_file(str(archive), bucket, key, ExtraArgs=extra, Callback=bar.update, Config=transfer)
    except ClientError as exc:
        raise _s3_error(exc, bucket) from None
    except S3UploadFailedError as exc:
        cause = exc.__context__
        if isinstance(cause, ClientError):
            raise _s3_error(cause, bucket) from None
        raise PushError(f"upload to s3://{bucket}/{key} failed: {exc}") from None
    except NoCredentialsError:
        raise PushError("no AWS credentials found (set AWS_PROFILE, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)") from None
    except BotoCoreError as exc:
        raise PushError(f"upload to s3://{bucket}/{key} failed: {exc}") from None
    return PushResult(uri=f"s3://{bucket}/{key}", manifest_sha256=manifest_sha256, kind=kind, size=size)


__all__ = ["ENVIRONMENTS", "PushError", "PushResult", "push_archive", "read_manifest_bytes", "destination_key"]
