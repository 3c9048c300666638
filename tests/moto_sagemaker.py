"""moto's standalone server plus the SageMaker and CodeBuild behaviours moto 5.2.5 lacks.

Run as `python tests/moto_sagemaker.py -H 127.0.0.1 -p PORT` (same arguments as
moto_server). Added, in the server process only:

- UpdateEndpoint: the endpoint moves to the new endpoint config (moto answers 500).
- A failing container: an endpoint whose model has the environment variable
  MOTO_FAILURE_REASON is created Failed, with that FailureReason, as SageMaker reports
  an image that never passes /ping.
- CodeBuild builds as CodeBuild reports them: StartBuild's overrides (source, buildspec,
  environment, role, timeout, log group) show in BatchGetBuilds; moto's own builds keep
  none of them. A build runs nothing: it ends at its first BatchGetBuilds as the object
  s3://moto-codebuild/next-build.json (if a test wrote one) says, else SUCCEEDED:
  `{"status": "FAILED", "phase": "BUILD", "message": "...", "log": ["line", ...]}`, or
  `{"status": "IN_PROGRESS"}` for a build that never ends. Its "log" lines go to CloudWatch
  Logs, to the build's group and stream, as CodeBuild writes them.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Any, Iterator

FAILURE_VARIABLE = "MOTO_FAILURE_REASON"
BUILD_SCRIPT = ("moto-codebuild", "next-build.json")  # bucket, key
AWS_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


@contextlib.contextmanager
def running(log_path: Path) -> Iterator[str]:
    """This server on a free port; while open, boto3 in this process sends every service
    (SageMaker, Application Auto Scaling, the runtime, S3) to it. Yields its URL."""
    import pytest

    from devtools.local_s3 import moto_ready
    from smvision.deploy.server_process import ServerProcess, free_port

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = ServerProcess([sys.executable, __file__, "-H", "127.0.0.1", "-p", str(port)], url, name="moto server",
                           log_path=log_path, ready=moto_ready, ready_timeout_s=30)
    with server, pytest.MonkeyPatch.context() as env:
        for name, value in {"AWS_ENDPOINT_URL": url, "AWS_ENDPOINT_URL_S3": url, **AWS_ENV}.items():
            env.setenv(name, value)
        env.delenv("AWS_REGION", raising=False)
        env.delenv("AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME", raising=False)
        yield url


def _patch_moto() -> None:
    """Add UpdateEndpoint and failing containers to moto's SageMaker, in this process."""
    from moto.sagemaker.exceptions import ValidationError
    from moto.sagemaker.models import SageMakerModelBackend
    from moto.sagemaker.responses import SageMakerResponse
    from moto.core.common_types import TYPE_RESPONSE
    from moto.core.utils import utcnow

    def _failure_reason(backend: SageMakerModelBackend, variants: list[dict[str, Any]]) -> str | None:
        for variant in variants:
            model = backend._models.get(variant.get("ModelName"))
            environment = (getattr(model, "primary_container", None) or {}).get("Environment") or {}
            if FAILURE_VARIABLE in environment:
                return environment[FAILURE_VARIABLE]
        return None

    _create_endpoint = SageMakerModelBackend.create_endpoint

    def create_endpoint(self: SageMakerModelBackend, endpoint_name: str, endpoint_config_name: str, tags: Any) -> Any:
        endpoint = _create_endpoint(self, endpoint_name, endpoint_config_name, tags)
        reason = _failure_reason(self, self.describe_endpoint_config(endpoint_config_name)["ProductionVariants"])
        if reason:
            endpoint.endpoint_status = "Failed"
            endpoint.failure_reason = reason
        return endpoint

    def update_endpoint(self: SageMakerModelBackend, endpoint_name: str, endpoint_config_name: str) -> str:
        endpoint = self.endpoints.get(endpoint_name)
        if endpoint is None:
            raise ValidationError(message=f"Could not find endpoint '{endpoint_name}'.")
        try:
            config = self.describe_endpoint_config(endpoint_config_name)
        except KeyError:
            raise ValidationError(message=f"Could not find endpoint configuration '{endpoint_config_name}'.") from None
        reason = _failure_reason(self, config["ProductionVariants"])
        if reason:  # SageMaker rolls a failed update back: InService on the old config
            endpoint.failure_reason = reason
        else:
            endpoint.endpoint_config_name = endpoint_config_name
            endpoint.production_variants = endpoint._process_production_variants(config["ProductionVariants"])
            endpoint.failure_reason = None
        endpoint.last_modified_time = utcnow()
        return endpoint.arn

    def update_endpoint_response(self: SageMakerResponse) -> TYPE_RESPONSE:
        import json

        arn = self.sagemaker_backend.update_endpoint(self._get_param("EndpointName"), self._get_param("EndpointConfigName"))
        return 200, {}, json.dumps({"EndpointArn": arn})

    SageMakerModelBackend.create_endpoint = create_endpoint
    SageMakerModelBackend.update_endpoint = update_endpoint
    SageMakerResponse.update_endpoint = update_endpoint_response


def _patch_codebuild() -> None:
    """StartBuild's overrides kept, and builds that end as the test's script says (module docstring)."""
    import json

    from moto.codebuild.models import CodeBuildBackend
    from moto.codebuild.responses import CodeBuildResponse
    from moto.core.utils import iso_8601_datetime_with_milliseconds, unix_time_millis
    from moto.logs.models import logs_backends
    from moto.s3.models import s3_backends

    _start_build = CodeBuildResponse.start_build

    def start_build(self: CodeBuildResponse) -> Any:
        result = _start_build(self)
        project = self.codebuild_backend.codebuild_projects[self._get_param("projectName")].project_metadata
        build = self.codebuild_backend.build_metadata[self._get_param("projectName")].build_metadata
        source = dict(project["source"])
        source.update({k: v for k, v in {"type": self._get_param("sourceTypeOverride"),
                                         "location": self._get_param("sourceLocationOverride"),
                                         "buildspec": self._get_param("buildspecOverride")}.items() if v})
        environment = dict(project["environment"])
        for field, override in (("type", "environmentTypeOverride"), ("image", "imageOverride"),
                                ("computeType", "computeTypeOverride"), ("privilegedMode", "privilegedModeOverride"),
                                ("environmentVariables", "environmentVariablesOverride")):
            if self._get_param(override) is not None:
                environment[field] = self._get_param(override)
        logs = (self._get_param("logsConfigOverride") or project.get("logsConfig") or {}).get("cloudWatchLogs", {})
        build.update(source=source, environment=environment,
                     serviceRole=self._get_param("serviceRoleOverride") or project["serviceRole"],
                     timeoutInMinutes=self._get_param("timeoutInMinutesOverride") or project["timeoutInMinutes"])
        build["logs"] = {"groupName": logs.get("groupName") or f"/aws/codebuild/{build['projectName']}",
                         "streamName": build["id"].split(":", 1)[1], "deepLink": build["logs"]["deepLink"]}
        return result

    def script(account_id: str) -> dict[str, Any]:
        try:
            key = s3_backends[account_id]["aws"].get_object(*BUILD_SCRIPT)
        except Exception:  # no bucket or no object: moto's own outcome
            return {"status": "SUCCEEDED"}
        return json.loads(key.value) if key is not None else {"status": "SUCCEEDED"}

    def write_log(backend: CodeBuildBackend, build: dict[str, Any], lines: list[str]) -> None:
        logs = logs_backends[backend.account_id][backend.region_name]
        group, stream = build["logs"]["groupName"], build["logs"]["streamName"]
        if group not in logs.groups:
            logs.create_log_group(group, {})
        if stream not in logs.groups[group].streams:
            logs.create_log_stream(group, stream)
        now = int(unix_time_millis())
        logs.put_log_events(group, stream, [{"timestamp": now, "message": line} for line in lines])

    def batch_get_builds(self: CodeBuildBackend, ids: list[str]) -> list[dict[str, Any]]:
        found = [b for history in self.build_metadata_history.values() for b in history if b["id"] in ids]
        for build in found:
            if build.get("buildComplete"):
                continue
            outcome = script(self.account_id)
            now = iso_8601_datetime_with_milliseconds()
            if outcome["status"] == "IN_PROGRESS":
                build.update(currentPhase=outcome.get("phase", "BUILD"))
                continue
            failed_phase = outcome.get("phase") if outcome["status"] != "SUCCEEDED" else None
            phases = [p for p in build["phases"] if p["phaseType"] == "SUBMITTED"]
            for name in ("QUEUED", "PROVISIONING", "DOWNLOAD_SOURCE", "INSTALL", "PRE_BUILD", "BUILD", "POST_BUILD",
                         "UPLOAD_ARTIFACTS", "FINALIZING"):
                phase: dict[str, Any] = {"phaseType": name, "startTime": now, "endTime": now, "durationInSeconds": 0,
                                         "phaseStatus": "SUCCEEDED"}
                if name == failed_phase:
                    context = {"statusCode": "COMMAND_EXECUTION_ERROR", "message": outcome.get("message", "")}
                    phase.update(phaseStatus=outcome["status"], contexts=[context])
                phases.append(phase)
            phases.append({"phaseType": "COMPLETED", "startTime": now})
            write_log(self, build, outcome.get("log", ["moto: a build that runs nothing"]))
            build.update(phases=phases, currentPhase="COMPLETED", buildStatus=outcome["status"], buildComplete=True,
                         endTime=now)
        return found

    CodeBuildResponse.start_build = start_build
    CodeBuildBackend.batch_get_builds = batch_get_builds


if __name__ == "__main__":
    from moto.server import main

    _patch_moto()
    _patch_codebuild()
    main(sys.argv[1:])
