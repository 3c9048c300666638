"""SageMaker batch transform jobs: create, wait with progress, list what they wrote."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from smvision.deploy import batching
from smvision.deploy.aws import AwsError
from smvision.deploy.local_transform import TransformOptions, split_s3_uri
from smvision.deploy.progress import Report, report_to_stderr

class TransformJobError(AwsError):
    """The job failed or stopped; the message carries its FailureReason."""


@dataclass
class JobSpec:
    model_name: str
    input_uri: str
    output_uri: str
    options: TransformOptions
    instance_type: str = "ml.c5.xlarge"
    instance_count: int = 1
    job_name: str | None = None
    environment: dict[str, str] | None = None
    transform_ami_version: str | None = None  # TransformResources.TransformAmiVersion (deploy/amis.py)

    def request(self) -> dict[str, Any]:
        """The CreateTransformJob request."""
        opts = self.options
        split_s3_uri(self.input_uri), split_s3_uri(self.output_uri)
        if opts.split_type not in batching.SPLIT_TYPES:
            raise ValueError(f"--split-type must be one of {batching.SPLIT_TYPES}")
        if opts.assemble_with not in batching.ASSEMBLE_WITH:
            raise ValueError(f"--assemble-with must be one of {batching.ASSEMBLE_WITH}")
        if self.instance_count < 1:
            raise ValueError("--instance-count must be at least 1")
        name = self.job_name or f"{self.model_name[:44]}-{job_stamp()}"
        transform_input: dict[str, Any] = {
            "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": self.input_uri}},
            "SplitType": opts.split_type,
            "CompressionType": "None",
        }
        if opts.content_type:
            transform_input["ContentType"] = opts.content_type
        output: dict[str, Any] = {"S3OutputPath": self.output_uri, "AssembleWith": opts.assemble_with}
        if opts.accept:
            output["Accept"] = opts.accept
        request: dict[str, Any] = {
            "TransformJobName": name,
            "ModelName": self.model_name,
            "TransformInput": transform_input,
            "TransformOutput": output,
            "TransformResources": {"InstanceType": self.instance_type, "InstanceCount": self.instance_count},
        }
        if self.transform_ami_version:
            request["TransformResources"]["TransformAmiVersion"] = self.transform_ami_version
        if opts.batch_strategy:
            if opts.batch_strategy not in batching.BATCH_STRATEGIES:
                raise ValueError(f"--batch-strategy must be one of {batching.BATCH_STRATEGIES}")
            request["BatchStrategy"] = opts.batch_strategy
        if opts.max_payload_mb is not None:
            if opts.max_payload_mb != int(opts.max_payload_mb):
                raise ValueError("SageMaker takes MaxPayloadInMB in whole MB")
            batching.payload_limit(opts.max_payload_mb)
            request["MaxPayloadInMB"] = int(opts.max_payload_mb)
        if opts.max_concurrent_transforms:
            request["MaxConcurrentTransforms"] = opts.max_concurrent_transforms
        if (opts.max_concurrent_transforms or 1) * (opts.max_payload_mb or 0) > 100:
            raise ValueError("MaxConcurrentTransforms x MaxPayloadInMB must be at most 100 MB")
        if self.environment:
            request["Environment"] = dict(self.environment)
        return request


def job_stamp(now: datetime | None = None) -> str:
    """A UTC millisecond stamp for job names (17 digits, sorts as time does)."""
    return (now or datetime.now(timezone.utc)).strftime("%Y%m%d%H%M%S%f")[:17]


def check_model_source(model_data: str | None, role: str | None) -> None:
    """ValueError naming the option when `transform --model-data` lacks what CreateModel needs."""
    if not model_data or not model_data.startswith("s3://"):
        raise ValueError(f"--model-data must be an s3:// URI of model.tar.gz, got {model_data!r}")
    if not role or not role.startswith("arn:"):
        raise ValueError(f"--model-data needs --role, an IAM role ARN, got {role!r}")


def create_model(sm: Any, name: str, model_data: str, role: str, image: str) -> str:
    """CreateModel for a job of its own (`transform --model-data`): model_data in image; returns its name."""
    check_model_source(model_data, role)
    sm.create_model(ModelName=name, ExecutionRoleArn=role,
                    PrimaryContainer={"Image": image, "ModelDataUrl": model_data},
                    Tags=[{"Key": "smvision:transform", "Value": name}])
    return name


def create_job(sm: Any, spec: JobSpec) -> str:
    """CreateTransformJob; returns the job name."""
    request = spec.request()
    sm.create_transform_job(**request)
    return request["TransformJobName"]


def wait_for_job(sm: Any, name: str, timeout_s: float = 86400, poll_s: float = 30, report: Report = report_to_stderr) -> dict[str, Any]:
    """Poll until Completed; TransformJobError with FailureReason on Failed/Stopped or timeout."""
    started = time.monotonic()
    last = None
    while True:
        description = sm.describe_transform_job(TransformJobName=name)
        status = description["TransformJobStatus"]
        elapsed = time.monotonic() - started
        if status != last:
            report(f"transform job {name}: {status} ({elapsed:.0f} s)")
            last = status
        if status == "Completed":
            return description
        if status in ("Failed", "Stopped"):
            raise TransformJobError(
                f"transform job {name} {status}: {description.get('FailureReason') or 'no reason given'} "
                f"(CloudWatch log group /aws/sagemaker/TransformJobs, stream {name}/...)"
            )
        if elapsed >= timeout_s:
            raise TransformJobError(f"transform job {name} still {status} after {timeout_s:g} s; it goes on")
        time.sleep(min(poll_s, max(0.0, timeout_s - elapsed)))


def list_outputs(s3: Any, output_uri: str) -> list[str]:
    """The .out objects under the output prefix, in key order."""
    bucket, prefix = split_s3_uri(output_uri)
    prefix = prefix.rstrip("/") + "/" if prefix.strip("/") else ""
    uris = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        uris += [f"s3://{bucket}/{item['Key']}" for item in page.get("Contents", []) if item["Key"].endswith(".out")]
    return sorted(uris)
