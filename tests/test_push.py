"""`smvision archive push`: multipart upload to s3://B/P/<env>/<UTC timestamp>/model.tar.gz."""

from __future__ import annotations

import hashlib
import re

import boto3
import pytest

from smvision.archive.build import read_member
from smvision.archive.push import PushError, push_archive
from smvision.cli import main
from support import DenyingAws, HttpStub

BUCKET = "smvision-models"


@pytest.fixture(scope="module")
def models_bucket(s3_endpoint) -> str:
    boto3.client("s3").create_bucket(Bucket=BUCKET)
    return BUCKET


def test_push_uploads_in_parts_with_the_manifest_digest(d0_archive, models_bucket):
    # D0 is about 16 MB: 5 MiB parts (S3's minimum) make a multipart upload of 4 parts.
    result = push_archive(d0_archive, models_bucket, "efficientdet/d0", "staging",
                          multipart_threshold=5 * 2**20, chunk_size=5 * 2**20, show_progress=False)

    match = re.fullmatch(rf"s3://{BUCKET}/efficientdet/d0/staging/(\d{{8}}T\d{{6}}Z)/model\.tar\.gz", result.uri)
    assert match, result.uri
    key = result.uri.removeprefix(f"s3://{BUCKET}/")
    head = boto3.client("s3").head_object(Bucket=BUCKET, Key=key)
    manifest_digest = hashlib.sha256(read_member(d0_archive, "manifest.json")).hexdigest()
    assert head["Metadata"]["smvision-manifest-sha256"] == manifest_digest == result.manifest_sha256
    assert head["Metadata"]["smvision-kind"] == "efficientdet"
    assert head["ETag"].strip('"').endswith(f"-{-(-d0_archive.stat().st_size // (5 * 2**20))}")  # multipart
    body = boto3.client("s3").get_object(Bucket=BUCKET, Key=key)["Body"].read()
    assert body == d0_archive.read_bytes()


def test_cli_prints_the_uri(d0_archive, models_bucket, capsys):
    assert main(["archive", "push", str(d0_archive), "--bucket", models_bucket, "--prefix", "d0", "--env", "dev"]) == 0
    uri = capsys.readouterr().out.strip()
    assert re.fullmatch(rf"s3://{BUCKET}/d0/dev/\d{{8}}T\d{{6}}Z/model\.tar\.gz", uri), uri
    key = uri.removeprefix(f"s3://{BUCKET}/")
    assert boto3.client("s3").head_object(Bucket=BUCKET, Key=key)["ContentLength"] == d0_archive.stat().st_size


def test_missing_bucket_is_a_clear_error(d0_archive, s3_endpoint, capsys):
    code = main(["archive", "push", str(d0_archive), "--bucket", "no-such-bucket", "--prefix", "x", "--env", "prod"])
    assert code == 1
    assert "bucket 'no-such-bucket' does not exist" in capsys.readouterr().err


def test_archive_without_manifest_is_refused(tmp_path, models_bucket):
    import tarfile

    bogus = tmp_path / "model.tar.gz"
    with tarfile.open(bogus, "w:gz") as tar:
        (tmp_path / "model.pth").write_bytes(b"weights")
        tar.add(tmp_path / "model.pth", arcname="model.pth")
    with pytest.raises(PushError, match="has no manifest.json"):
        push_archive(bogus, models_bucket, "x", "dev", show_progress=False)


def test_bad_env_is_a_usage_error(d0_archive):
    with pytest.raises(SystemExit) as exit_info:
        main(["archive", "push", str(d0_archive), "--bucket", "b", "--env", "production"])
    assert exit_info.value.code == 2


def test_denied_access_is_a_clear_error(d0_archive, s3_endpoint, monkeypatch, capsys):
    with HttpStub(DenyingAws) as denying:  # an S3 endpoint that refuses every request
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", denying.url)
        code = main(["archive", "push", str(d0_archive), "--bucket", "locked", "--prefix", "x", "--env", "dev"])
    assert code == 1
    assert "access to bucket 'locked' denied" in capsys.readouterr().err


def test_cli_takes_region(d0_archive, models_bucket, capsys):
    assert main(["archive", "push", str(d0_archive), "--bucket", models_bucket, "--prefix", "r", "--env", "dev",
                 "--region", "us-east-1", "--no-progress"]) == 0
    assert capsys.readouterr().out.startswith(f"s3://{BUCKET}/r/dev/")
