"""Invoke an endpoint: real-time (InvokeEndpoint) or async (S3 in, S3 out).

Bodies follow the request contract (README "Requests"): a file or stdin as it is, or a
list of S3 images turned into CSV, JSON or JSON lines records. Real-time calls go through
boto3's sagemaker-runtime client, so AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME pointed at a
local `smvision serve` works unchanged.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from typing import Any, Sequence

from botocore.exceptions import ClientError

from smvision.deploy.aws import AwsError, error_code

CSV = "text/csv"
JSON = "application/json"
JSONLINES = "application/jsonlines"
EXTENSIONS = {CSV: ".csv", JSON: ".json", JSONLINES: ".jsonl"}


class ModelError(AwsError):
    """The container answered an error: its status and message, as it sent them."""

    def __init__(self, endpoint: str, status: int | None, message: str) -> None:
        super().__init__(f"endpoint {endpoint}: the model answered {status}: {message}")
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Answer:
    body: bytes
    content_type: str
    variant: str | None = None


def s3_parts(reference: str) -> tuple[str, str]:
    """'bucket/key' or 's3://bucket/key' -> (bucket, key)."""
    text = reference.removeprefix("s3://")
    bucket, _, key = text.partition("/")
    if not bucket or not key:
        raise ValueError(f"S3 references look like bucket/key or s3://bucket/key, got {reference!r}")
    return bucket, key


def body_for_images(references: Sequence[str], content_type: str, params: dict[str, Any] | None = None) -> bytes:
    """One record per S3 image, in the content type's request shape."""
    if not references:
        raise ValueError("no S3 images given")
    pairs = [s3_parts(reference) for reference in references]
    if content_type == CSV:
        if params:
            raise ValueError("CSV records carry no parameters: use application/json or application/jsonlines")
        return "".join(f"{bucket}/{key}\n" for bucket, key in pairs).encode("utf-8")
    records = [{"bucket": bucket, "key": key, **(params or {})} for bucket, key in pairs]
    if content_type == JSON:
        return json.dumps(records if len(records) > 1 else records[0]).encode("utf-8")
    if content_type == JSONLINES:
        return "".join(json.dumps(record) + "\n" for record in records).encode("utf-8")
    raise ValueError(f"S3 image lists are sent as {CSV}, {JSON} or {JSONLINES}, not {content_type}")


def invoke(runtime: Any, endpoint: str, body: bytes, content_type: str, accept: str | None = None) -> Answer:
    """InvokeEndpoint; a container error raises ModelError with its original status and message."""
    kwargs: dict[str, Any] = {"EndpointName": endpoint, "Body": body, "ContentType": content_type}
    if accept:
        kwargs["Accept"] = accept
    try:
        response = runtime.invoke_endpoint(**kwargs)
    except ClientError as exc:
        if error_code(exc) == "ModelError":
            original = exc.response.get("OriginalStatusCode")
            message = exc.response.get("OriginalMessage") or exc.response.get("Error", {}).get("Message", "")
            raise ModelError(endpoint, original, str(message)) from None
        raise
    return Answer(response["Body"].read(), response.get("ContentType", ""), response.get("InvokedProductionVariant"))


def async_input_prefix(sm: Any, endpoint: str) -> str:
    """Where async inputs go by default: next to the endpoint's async output path, `-input`."""
    config_name = sm.describe_endpoint(EndpointName=endpoint)["EndpointConfigName"]
    config = sm.describe_endpoint_config(EndpointConfigName=config_name)
    output = config.get("AsyncInferenceConfig", {}).get("OutputConfig", {}).get("S3OutputPath")
    if not output:
        raise AwsError(f"endpoint {endpoint} is not an async endpoint (its config has no AsyncInferenceConfig)")
    return output.rstrip("/") + "-input/"


def invoke_async(
    runtime: Any,
    s3: Any,
    endpoint: str,
    body: bytes,
    content_type: str,
    input_prefix: str,
    accept: str | None = None,
    timeout_s: float = 3600,
    poll_s: float = 5,
) -> tuple[str, bytes]:
    """Upload body, InvokeEndpointAsync, and wait for the output object; returns (URI, bytes).

    The failure object (S3FailurePath) raises ModelError with what it says.
    """
    bucket, prefix = s3_parts(input_prefix.rstrip("/") + "/_")
    key = prefix[:-1] + f"{uuid.uuid4().hex}{EXTENSIONS.get(content_type, '')}"
    s3.put_object(Bucket=bucket, Key=key, Body=body, ContentType=content_type)
    kwargs: dict[str, Any] = {"EndpointName": endpoint, "InputLocation": f"s3://{bucket}/{key}", "ContentType": content_type}
    if accept:
        kwargs["Accept"] = accept
    response = runtime.invoke_endpoint_async(**kwargs)
    output, failure = response["OutputLocation"], response.get("FailureLocation")
    deadline = time.monotonic() + timeout_s
    while True:
        found = _read_if_there(s3, output)
        if found is not None:
            return output, found
        if failure:
            failed = _read_if_there(s3, failure)
            if failed is not None:
                raise ModelError(endpoint, None, f"async inference failed ({failure}): {failed.decode('utf-8', 'replace')}")
        if time.monotonic() >= deadline:
            raise AwsError(f"no async result at {output} after {timeout_s:g} s (inference id {response.get('InferenceId')})")
        time.sleep(poll_s)


def _read_if_there(s3: Any, uri: str) -> bytes | None:
    bucket, key = s3_parts(uri)
    try:
        return s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    except ClientError as exc:
        if error_code(exc) in ("NoSuchKey", "404", "NoSuchBucket"):
            return None
        raise
