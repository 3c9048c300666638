"""`--region` on every command that talks to AWS: each signs its requests for that region,
whatever AWS_DEFAULT_REGION says (README: "Every command takes --region").

An endpoint on 127.0.0.1 stands in for every AWS service (AWS_ENDPOINT_URL): it records the
SigV4 credential scope of each request and refuses it, so each command stops at its first call.
"""

from __future__ import annotations

import json
import re
import tarfile

import pytest

from smvision.cli import main
from support import DenyingAws, HttpStub

REGION = "eu-west-3"
SCOPE = re.compile(r"Credential=[^/]+/\d{8}/([a-z0-9-]+)/([a-z0-9.-]+)/aws4_request")


def scope(authorization: str) -> tuple[str, str]:
    """(region, service) a request was signed for, from its Authorization header."""
    match = SCOPE.search(authorization)
    return match.groups() if match else ("unsigned", "")


@pytest.fixture
def aws_everywhere(monkeypatch):
    """Every AWS service at the recorder, dummy credentials, AWS_DEFAULT_REGION us-east-1."""
    import os

    for name in list(os.environ):
        if name.startswith("AWS_ENDPOINT_URL") or name in ("AWS_REGION", "AWS_PROFILE"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    DenyingAws.seen = []
    with HttpStub(DenyingAws) as recorder:
        monkeypatch.setenv("AWS_ENDPOINT_URL", recorder.url)
        yield DenyingAws.seen


def pushable_archive(folder) -> str:
    """A model.tar.gz with a manifest: all `archive push` reads before it uploads."""
    manifest = folder / "manifest.json"
    manifest.write_text(json.dumps({"kind": "efficientdet", "files": {}}))
    archive = folder / "model.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(manifest, arcname="manifest.json")
    return str(archive)


def commands(tmp_path) -> dict[str, list[str]]:
    body = tmp_path / "request.csv"
    body.write_text("bucket/a.jpg\n")
    return {
        "archive push": ["archive", "push", pushable_archive(tmp_path), "--bucket", "models", "--env", "dev"],
        "deploy create": ["deploy", "create", "--name", "d0", "--model-data", "s3://models/model.tar.gz",
                          "--role", "arn:aws:iam::123456789012:role/R", "--instance-type", "ml.c5.xlarge"],
        "deploy delete": ["deploy", "delete", "--name", "d0"],
        "deploy list": ["deploy", "list"],
        "invoke": ["invoke", "--name", "d0", str(body)],
        "transform": ["transform", "--model-name", "m", "--input", "s3://data/in/", "--output", "s3://data/out/"],
        "transform --local": ["transform", "--local", "--server-url", "http://127.0.0.1:9", "--input",
                              "s3://data/in/", "--output", "s3://data/out/", "--no-progress"],
        "bench --name": ["bench", "--name", "d0", str(body), "-n", "1", "--warmup", "0"],
        "image push --remote": ["image", "push", "cpu", "--remote"],
        "transform --model-data": ["transform", "--model-data", "s3://models/model.tar.gz", "--role",
                                   "arn:aws:iam::123456789012:role/R", "--input", "s3://data/in/", "--output",
                                   "s3://data/out/"],
    }


@pytest.mark.parametrize("command", ["archive push", "deploy create", "deploy delete", "deploy list", "invoke",
                                     "transform", "transform --local", "bench --name", "image push --remote",
                                     "transform --model-data"])
def test_every_aws_command_signs_for_the_region_given(command, aws_everywhere, tmp_path, capsys):
    code = main([*commands(tmp_path)[command], "--region", REGION])
    err = capsys.readouterr().err
    assert code == 1, err  # refused by the recorder: a one-line error, no traceback
    scopes = [scope(header) for header in aws_everywhere]
    assert scopes, f"{command} sent no request"
    assert {region for region, _ in scopes} == {REGION}, scopes
