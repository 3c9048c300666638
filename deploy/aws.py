"""boto3 clients for the tools, with standard retries and a clear error without a region.

Every service honours AWS_ENDPOINT_URL and AWS_ENDPOINT_URL_<SERVICE> (boto3's own
settings), which is how the tests point SageMaker, Application Auto Scaling, S3 and the
runtime at a local server.
"""

from __future__ import annotations

from typing import Any

import boto3
from botocore.config import Config

RETRIES = Config(retries={"mode": "standard", "max_attempts": 8})


class AwsError(RuntimeError):
    """An AWS call failed in a way the user must act on; the message says how."""


def region_name(session: boto3.Session | None = None) -> str:
    """The session's region; AwsError if none is configured."""
    region = (session or boto3.Session()).region_name
    if not region:
        raise AwsError("no AWS region configured: set AWS_REGION (or AWS_DEFAULT_REGION), or pass --region")
    return region


def client(service: str, region: str | None = None, config: Config | None = None) -> Any:
    """A boto3 client for service in region (default: the configured one)."""
    return boto3.client(service, region_name=region or region_name(), config=config or RETRIES)


def error_code(exc: Exception) -> str:
    """The AWS error code of a botocore ClientError ('' for anything else)."""
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


def error_message(exc: Exception) -> str:
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Message", "")) or str(exc)
