"""Real-time, async and serverless endpoints: create, update in place, wait, delete, list.

One deployment = a model and an endpoint config both named `<endpoint>-<stamp>` (a
millisecond UTC stamp), and the endpoint itself. Deploying to an endpoint that exists
makes a new model and config and calls UpdateEndpoint, which SageMaker performs without
downtime (new instances first, then traffic moves, then the old ones go); once the
endpoint is InService again the previous config and model are deleted.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable

from botocore.exceptions import ClientError

from smvision.deploy import autoscaling
from smvision.deploy.amis import describe as describe_ami
from smvision.deploy.autoscaling import Scaling
from smvision.deploy.aws import AwsError, error_code, error_message
from smvision.deploy.progress import Report, report_to_stderr

VARIANT = "AllTraffic"
STAMP_DIGITS = 17  # YYYYmmddHHMMSSfff
MAX_NAME = 63 - 1 - STAMP_DIGITS
NAME_PATTERN = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9])*$")
SERVERLESS_MEMORY_MB = (1024, 2048, 3072, 4096, 5120, 6144)
BUSY = ("Creating", "Updating", "SystemUpdating", "RollingBack", "Deleting", "UpdateRollbackFailed")

class DeployError(AwsError):
    """The deployment did not reach InService (or could not start); the message says why."""


@dataclass
class EndpointSpec:
    """Everything `smvision deploy create` asks for."""

    name: str
    model_data: str
    role: str
    instance_type: str | None = None
    instance_count: int = 1
    image: str | None = None
    environment: dict[str, str] = field(default_factory=dict)
    autoscale: Scaling | None = None
    async_output: str | None = None
    async_failure: str | None = None
    async_max_concurrent: int | None = None
    serverless_memory_mb: int | None = None
    serverless_max_concurrency: int = 5
    startup_timeout_s: int = 600
    inference_ami_version: str | None = None  # ProductionVariant.InferenceAmiVersion (deploy/amis.py)

    def validate(self) -> None:
        """Raise ValueError naming the option that is wrong."""
        if len(self.name) > MAX_NAME or not NAME_PATTERN.match(self.name):
            raise ValueError(
                f"--name must be letters, digits and hyphens, at most {MAX_NAME} characters "
                f"(SageMaker adds -<timestamp> for the model and config), got {self.name!r}"
            )
        if not self.model_data.startswith("s3://"):
            raise ValueError(f"--model-data must be an s3:// URI of model.tar.gz, got {self.model_data!r}")
        if not self.role.startswith("arn:"):
            raise ValueError(f"--role must be an IAM role ARN, got {self.role!r}")
        if self.serverless_memory_mb is not None:
            if self.serverless_memory_mb not in SERVERLESS_MEMORY_MB:
                raise ValueError(f"--serverless takes a memory size in MB, one of {SERVERLESS_MEMORY_MB}")
            if self.autoscale or self.async_output:
                raise ValueError("--serverless cannot be combined with --autoscale or --async-output")
            if not 1 <= self.serverless_max_concurrency <= 200:
                raise ValueError("serverless max concurrency must be 1-200")
        else:
            if not self.instance_type:
                raise ValueError("--instance-type is required (except with --serverless)")
            if self.instance_count < 1:
                raise ValueError(f"--instance-count must be at least 1, got {self.instance_count}")
            if not 60 <= self.startup_timeout_s <= 3600:
                raise ValueError("the startup health check timeout must be 60-3600 s")
        for uri in (self.async_output, self.async_failure):
            if uri is not None and not uri.startswith("s3://"):
                raise ValueError(f"async output locations must be s3:// URIs, got {uri!r}")

    def production_variant(self, model_name: str) -> dict[str, Any]:
        variant: dict[str, Any] = {"VariantName": VARIANT, "ModelName": model_name}
        if self.serverless_memory_mb is not None:
            variant["ServerlessConfig"] = {
                "MemorySizeInMB": self.serverless_memory_mb,
                "MaxConcurrency": self.serverless_max_concurrency,
            }
        else:
            variant.update(
                InstanceType=self.instance_type,
                InitialInstanceCount=self.instance_count,
                InitialVariantWeight=1.0,
                ContainerStartupHealthCheckTimeoutInSeconds=self.startup_timeout_s,
            )
            if self.inference_ami_version:
                variant["InferenceAmiVersion"] = self.inference_ami_version
        return variant

    def async_config(self) -> dict[str, Any] | None:
        if self.async_output is None:
            return None
        output: dict[str, Any] = {"S3OutputPath": self.async_output}
        if self.async_failure:
            output["S3FailurePath"] = self.async_failure
        config: dict[str, Any] = {"OutputConfig": output}
        if self.async_max_concurrent:
            config["ClientConfig"] = {"MaxConcurrentInvocationsPerInstance": self.async_max_concurrent}
        return config


def stamp(now: datetime | None = None) -> str:
    """A UTC millisecond stamp that sorts as time does (17 digits)."""
    return (now or datetime.now(timezone.utc)).strftime("%Y%m%d%H%M%S%f")[:STAMP_DIGITS]


def owned_name(endpoint: str, name: str) -> bool:
    """Whether a model or config name is one this module made for endpoint."""
    return re.fullmatch(re.escape(endpoint) + r"-\d{%d}" % STAMP_DIGITS, name) is not None


def describe_endpoint(sm: Any, name: str) -> dict[str, Any] | None:
    """DescribeEndpoint, or None when there is no such endpoint."""
    try:
        return sm.describe_endpoint(EndpointName=name)
    except ClientError as exc:
        if error_code(exc) == "ValidationException" and "not find" in error_message(exc).lower():
            return None
        raise


def wait_for_endpoint(
    sm: Any,
    name: str,
    timeout_s: float = 1800,
    poll_s: float = 15,
    report: Report = report_to_stderr,
    expected_config: str | None = None,
) -> dict[str, Any]:
    """Poll until InService; DeployError with FailureReason if it fails or times out.

    expected_config: after an update, InService on another config means SageMaker rolled
    the update back, which is a failure too.
    """
    started = time.monotonic()
    last = None
    while True:
        description = describe_endpoint(sm, name)
        if description is None:
            raise DeployError(f"endpoint {name} disappeared while waiting for it")
        status = description["EndpointStatus"]
        elapsed = time.monotonic() - started
        if status != last:
            report(f"endpoint {name}: {status} ({elapsed:.0f} s)")
            last = status
        reason = description.get("FailureReason") or "no reason given"
        if status == "InService":
            if expected_config and description.get("EndpointConfigName") != expected_config:
                raise DeployError(
                    f"the update of endpoint {name} was rolled back, it still runs "
                    f"{description.get('EndpointConfigName')}: {reason}"
                )
            return description
        if status in ("Failed", "OutOfService", "UpdateRollbackFailed"):
            raise DeployError(f"endpoint {name} is {status}: {reason}")
        if elapsed >= timeout_s:
            raise DeployError(
                f"endpoint {name} still {status} after {timeout_s:.0f} s; it goes on in the background "
                f"(`aws sagemaker describe-endpoint --endpoint-name {name}`)"
            )
        time.sleep(min(poll_s, max(0.0, timeout_s - elapsed)))


def create_or_update(
    sm: Any,
    scaling_client: Any,
    spec: EndpointSpec,
    region: str,
    *,
    wait: bool = True,
    timeout_s: float = 1800,
    poll_s: float = 15,
    report: Report = report_to_stderr,
) -> dict[str, Any]:
    """Create the endpoint, or update it to a new config when it exists; returns DescribeEndpoint."""
    spec.validate()
    existing = describe_endpoint(sm, spec.name)
    if existing is not None:
        status = existing["EndpointStatus"]
        if status in BUSY:
            raise DeployError(f"endpoint {spec.name} is {status}: wait until it settles, then deploy again")
        if status == "Failed":
            raise DeployError(
                f"endpoint {spec.name} is Failed ({existing.get('FailureReason') or 'no reason given'}); "
                f"SageMaker cannot update a failed endpoint: `smvision deploy delete --name {spec.name}` first"
            )

    image = spec.image
    if not image:  # the CLI always gives one: serving_image.choose_image
        raise ValueError("EndpointSpec.image is required (smvision.deploy.serving_image.choose_image picks ours)")
    name = f"{spec.name}-{stamp()}"
    tags = [{"Key": "smvision:endpoint", "Value": spec.name}]
    sm.create_model(
        ModelName=name,
        ExecutionRoleArn=spec.role,
        PrimaryContainer={"Image": image, "ModelDataUrl": spec.model_data, "Environment": dict(spec.environment)},
        Tags=tags,
    )
    report(f"model {name}: {image}")
    config: dict[str, Any] = {
        "EndpointConfigName": name,
        "ProductionVariants": [spec.production_variant(name)],
        "Tags": tags,
    }
    if spec.async_config() is not None:
        config["AsyncInferenceConfig"] = spec.async_config()
    sm.create_endpoint_config(**config)
    report(f"endpoint config {name}" + (f", host AMI {describe_ami(spec.inference_ami_version)}"
                                        if spec.inference_ami_version else ""))

    old_config, old_models = None, []
    if existing is None:
        sm.create_endpoint(EndpointName=spec.name, EndpointConfigName=name, Tags=tags)
    else:
        old_config = existing["EndpointConfigName"]
        old_models = _models_of(sm, old_config)
        # UpdateEndpoint fails on a variant that is a scalable target when the instance
        # type changes: take scaling off, update, and put it back below.
        autoscaling.disable(scaling_client, spec.name, VARIANT)
        sm.update_endpoint(EndpointName=spec.name, EndpointConfigName=name)
        report(f"endpoint {spec.name}: updating from {old_config} to {name}")
    if not wait:
        return describe_endpoint(sm, spec.name) or {}
    description = wait_for_endpoint(
        sm, spec.name, timeout_s=timeout_s, poll_s=poll_s, report=report, expected_config=name
    )
    if old_config is not None and old_config != name:
        for line in _delete_configs_and_models(sm, [old_config], old_models):
            report(f"deleted previous {line}")
    if spec.autoscale is not None:
        policy = autoscaling.enable(scaling_client, spec.name, VARIANT, spec.autoscale)
        report(
            f"autoscaling {spec.autoscale.min_capacity}-{spec.autoscale.max_capacity} instances, "
            f"{spec.autoscale.target_invocations:g} invocations per instance per minute ({policy})"
        )
    return description


def _models_of(sm: Any, config_name: str) -> list[str]:
    try:
        config = sm.describe_endpoint_config(EndpointConfigName=config_name)
    except ClientError as exc:
        if error_code(exc) == "ValidationException":
            return []
        raise
    return [variant["ModelName"] for variant in config.get("ProductionVariants", [])]


def _delete_quietly(call: Callable[..., Any], **kwargs: Any) -> bool:
    try:
        call(**kwargs)
    except ClientError as exc:
        if error_code(exc) in ("ValidationException", "ResourceNotFound"):
            return False
        raise
    return True


def _delete_configs_and_models(sm: Any, configs: list[str], models: list[str]) -> list[str]:
    """Delete the endpoint configs, then the models (those that exist); what was deleted."""
    deleted = []
    for config in configs:
        if _delete_quietly(sm.delete_endpoint_config, EndpointConfigName=config):
            deleted.append(f"endpoint config {config}")
    for model in models:
        if _delete_quietly(sm.delete_model, ModelName=model):
            deleted.append(f"model {model}")
    return deleted


def delete(sm: Any, scaling_client: Any, name: str) -> list[str]:
    """Remove the endpoint, its scaling, its config(s) and model(s); returns what was removed.

    Also sweeps configs and models left by this tool for the same name (an update that
    failed, a deploy that was interrupted). Quiet (an empty list) when nothing exists.
    """
    deleted: list[str] = []
    existing = describe_endpoint(sm, name)
    configs: list[str] = []
    models: list[str] = []
    if existing is not None:
        deleted += autoscaling.disable(scaling_client, name, VARIANT)
        configs.append(existing["EndpointConfigName"])
        models += _models_of(sm, existing["EndpointConfigName"])
        if _delete_quietly(sm.delete_endpoint, EndpointName=name):
            deleted.append(f"endpoint {name}")
    listed = _names(sm.get_paginator("list_endpoint_configs"), "EndpointConfigs", "EndpointConfigName", name)
    configs += [config for config in listed if config not in configs]
    for config in configs:
        models += [m for m in _models_of(sm, config) if m not in models]
    models += [m for m in _names(sm.get_paginator("list_models"), "Models", "ModelName", name) if m not in models]
    return deleted + _delete_configs_and_models(sm, configs, models)


def _names(paginator: Any, key: str, field_name: str, endpoint: str) -> list[str]:
    names = []
    for page in paginator.paginate(NameContains=endpoint):
        names += [item[field_name] for item in page.get(key, []) if owned_name(endpoint, item[field_name])]
    return names


def list_endpoints(sm: Any) -> list[dict[str, Any]]:
    """Every endpoint in the region: name, status, config, variant shape, creation time."""
    rows = []
    for page in sm.get_paginator("list_endpoints").paginate():
        for summary in page.get("Endpoints", []):
            name = summary["EndpointName"]
            description = describe_endpoint(sm, name) or {}
            config_name = description.get("EndpointConfigName", "")
            variants = []
            if config_name:
                try:
                    variants = sm.describe_endpoint_config(EndpointConfigName=config_name).get("ProductionVariants", [])
                except ClientError:
                    variants = []
            rows.append(
                {
                    "name": name,
                    "status": summary.get("EndpointStatus", description.get("EndpointStatus", "")),
                    "config": config_name,
                    "shape": ", ".join(_shape(variant) for variant in variants),
                    "created": summary.get("CreationTime"),
                    "failure_reason": description.get("FailureReason"),
                }
            )
    return sorted(rows, key=lambda row: row["name"])


def _shape(variant: dict[str, Any]) -> str:
    serverless = variant.get("ServerlessConfig")
    if serverless:
        return f"serverless {serverless.get('MemorySizeInMB')} MB"
    return f"{variant.get('InitialInstanceCount')} x {variant.get('InstanceType')}"
