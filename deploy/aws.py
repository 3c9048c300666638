"""boto3 clients for the tools, with standard retries and a clear error without a region.

Every service honours AWS_ENDPOINT_URL and AWS_ENDPOINT_URL_<SERVICE> (boto3's own
settings), which is how the tests point SageMaker, Application Auto Scaling, S3 and the
runtime at a local server.
"""

from __future__ import annotations

import os
from typing import Any

import boto3
from botocore.config import Config

RETRIES = Config(retries={"mode": "standard", "max_attempts": 8})


class AwsError(RuntimeError):
    """An AWS call failed in a way the user must act on; the message says how."""


def configured_region(session: boto3.Session | None = None) -> str | None:
    """boto3's region (AWS_DEFAULT_REGION, the profile), else AWS_REGION (which boto3 itself
    does not read); None when neither is set."""
    return (session or boto3.Session()).region_name or os.environ.get("AWS_REGION") or None


def region_name(session: boto3.Session | None = None) -> str:
    """The configured region (configured_region); AwsError if there is none."""
    region = configured_region(session)
    if not region:
        raise AwsError("no AWS region configured: set AWS_DEFAULT_REGION (or AWS_REGION), or pass --region")
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


def describe_error(exc: Exception) -> str:
    """One line for a failed AWS call: 'GetObject: NoSuchKey: The specified key does not exist.'"""
    operation = getattr(exc, "operation_name", "")
    code = error_code(exc)
    if not code:
        return str(exc)
    return f"{operation}: {code}: {error_message(exc)}" if operation else f"{code}: {error_message(exc)}"


def bucket_problem(exc: Exception, bucket: str, what: str, needs: str) -> str | None:
    """A missing bucket or denied access in words a user can act on; None for other errors.

    what names the bucket's role ("bucket", "output bucket"), needs the permissions wanted."""
    code = error_code(exc)
    status = (getattr(exc, "response", None) or {}).get("ResponseMetadata", {}).get("HTTPStatusCode")
    if code in ("404", "NoSuchBucket") or status == 404:
        return f"{what} {bucket!r} does not exist (or is in another account): create it first"
    if code in ("403", "AccessDenied", "AllAccessDisabled") or status == 403:
        return f"access to {what} {bucket!r} denied: the credentials need {needs} on it"
    return None
