"""`smvision image push --remote`: build and push the image in AWS CodeBuild.

For machines without a container engine (SageMaker Studio, CI runners). The build context
(build_context.BuildContext.zip_bytes) goes to S3; one CodeBuild project per region,
`smvision-image-build`, is created on first use (or reused) with a service role that may
read that source, write its log group and push to the one ECR repository; every build
then says all it needs as overrides of StartBuild (source, buildspec, environment,
compute, role), so a project made by an older smvision keeps working. The build's log is
streamed from CloudWatch Logs while it runs, and a failure names the phase that failed.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, Callable

from botocore.exceptions import ClientError

from smvision.deploy.aws import AwsError, bucket_problem, describe_error, error_code, error_message
from smvision.deploy.build_context import BuildContext, PLATFORM
from smvision.deploy.progress import Report, report_to_stderr

PROJECT = "smvision-image-build"
ROLE_POLICY = "smvision-image-build"
#: CodeBuild's Ubuntu image with Docker (privileged mode runs its daemon)
BUILD_IMAGE = "aws/codebuild/standard:7.0"
#: GPU images pull about 4 GB of CUDA wheels: more memory and a longer limit
COMPUTE = {"cpu": "BUILD_GENERAL1_MEDIUM", "gpu": "BUILD_GENERAL1_LARGE"}
BUILD_TIMEOUT_MIN = {"cpu": 60, "gpu": 90}
QUEUE_TIMEOUT_MIN = 60
SOURCE_PREFIX = "smvision-build/"
SOURCE_DAYS = 7
FINISHED = ("SUCCEEDED", "FAILED", "FAULT", "STOPPED", "TIMED_OUT")
ROLE_WAIT_S = 60.0  # a new IAM role takes a few seconds before CodeBuild may assume it

#: what a phase does, for the error when it fails
PHASES = {
    "SUBMITTED": "submitting the build",
    "QUEUED": "waiting for a build slot",
    "PROVISIONING": "starting the build environment (the service role must be assumable by CodeBuild)",
    "DOWNLOAD_SOURCE": "fetching the build context from S3 (the service role's s3:GetObject on it)",
    "INSTALL": "installing build tools",
    "PRE_BUILD": "logging in to ECR (the service role's ecr:GetAuthorizationToken)",
    "BUILD": "docker build and docker push (the log above says which; pulling a base image from Docker Hub "
             "can hit its rate limit for anonymous pulls)",
    "POST_BUILD": "after the build",
    "UPLOAD_ARTIFACTS": "uploading artifacts",
    "FINALIZING": "finishing the build",
}


class BuildError(AwsError):
    """The CodeBuild build failed, stopped or did not finish in time; the message names the phase."""


def partition(region: str) -> str:
    if region.startswith("cn-"):
        return "aws-cn"
    if region.startswith("us-gov-"):
        return "aws-us-gov"
    return "aws"


def default_bucket(account: str, region: str) -> str:
    return f"smvision-build-{account}-{region}"


def role_name(region: str) -> str:
    return f"{PROJECT}-{region}"


def log_group(project: str = PROJECT) -> str:
    return f"/aws/codebuild/{project}"


def ensure_bucket(s3: Any, bucket: str, region: str) -> bool:
    """The source bucket, created when absent (private; sources expire after SOURCE_DAYS days).
    True when it was created now."""
    try:
        s3.head_bucket(Bucket=bucket)
        return False
    except ClientError as exc:
        status = (exc.response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
        if error_code(exc) not in ("404", "NoSuchBucket") and status != 404:
            problem = bucket_problem(exc, bucket, "bucket", "s3:ListBucket and s3:PutObject") or describe_error(exc)
            raise AwsError(f"{problem}; or pass --bucket with a bucket of yours") from None
    options: dict[str, Any] = {"Bucket": bucket}
    if region != "us-east-1":
        options["CreateBucketConfiguration"] = {"LocationConstraint": region}
    try:
        s3.create_bucket(**options)
    except ClientError as exc:
        if error_code(exc) == "BucketAlreadyExists":
            raise AwsError(f"bucket {bucket!r} belongs to another account: pass --bucket with one of yours") from None
        raise
    s3.put_public_access_block(Bucket=bucket, PublicAccessBlockConfiguration={
        "BlockPublicAcls": True, "IgnorePublicAcls": True, "BlockPublicPolicy": True, "RestrictPublicBuckets": True})
    s3.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration={"Rules": [{
        "ID": "smvision-build-sources", "Status": "Enabled", "Filter": {"Prefix": SOURCE_PREFIX},
        "Expiration": {"Days": SOURCE_DAYS}}]})
    return True


def upload_source(s3: Any, bucket: str, context: BuildContext) -> str:
    """The zipped build context at s3://bucket/smvision-build/<tag>.zip; returns CodeBuild's `bucket/key`."""
    key = f"{SOURCE_PREFIX}{context.tag}.zip"
    s3.put_object(Bucket=bucket, Key=key, Body=context.zip_bytes(), ContentType="application/zip")
    return f"{bucket}/{key}"


def trust_policy(account: str) -> dict[str, Any]:
    return {"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Principal": {"Service": "codebuild.amazonaws.com"}, "Action": "sts:AssumeRole",
        "Condition": {"StringEquals": {"aws:SourceAccount": account}}}]}


def role_policy(region: str, account: str, repository_arn: str, bucket: str) -> dict[str, Any]:
    """What a build may do: write its log group, read its source, push to the one repository."""
    arn = partition(region)
    group = f"arn:{arn}:logs:{region}:{account}:log-group:{log_group()}"
    return {"Version": "2012-10-17", "Statement": [
        {"Sid": "Logs", "Effect": "Allow",
         "Action": ["logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents"],
         "Resource": [group, f"{group}:*"]},
        {"Sid": "Source", "Effect": "Allow", "Action": ["s3:GetObject", "s3:GetObjectVersion"],
         "Resource": f"arn:{arn}:s3:::{bucket}/{SOURCE_PREFIX}*"},
        {"Sid": "SourceBucket", "Effect": "Allow", "Action": ["s3:GetBucketAcl", "s3:GetBucketLocation"],
         "Resource": f"arn:{arn}:s3:::{bucket}"},
        {"Sid": "EcrLogin", "Effect": "Allow", "Action": "ecr:GetAuthorizationToken", "Resource": "*"},
        {"Sid": "EcrPush", "Effect": "Allow", "Action": [
            "ecr:BatchCheckLayerAvailability", "ecr:BatchGetImage", "ecr:CompleteLayerUpload",
            "ecr:GetDownloadUrlForLayer", "ecr:InitiateLayerUpload", "ecr:PutImage", "ecr:UploadLayerPart"],
         "Resource": repository_arn},
    ]}


def ensure_service_role(iam: Any, region: str, account: str, repository_arn: str, bucket: str) -> tuple[str, bool]:
    """The build's service role (`smvision-image-build-<region>`), created when absent; its inline
    policy is set to this push's repository and bucket. Returns (ARN, created now)."""
    name = role_name(region)
    created = False
    try:
        arn = iam.get_role(RoleName=name)["Role"]["Arn"]
    except ClientError as exc:
        if error_code(exc) != "NoSuchEntity":
            raise
        arn = iam.create_role(
            RoleName=name,
            AssumeRolePolicyDocument=json.dumps(trust_policy(account)),
            Description="smvision image push --remote: CodeBuild builds the serving image and pushes it to ECR",
            Tags=[{"Key": "smvision:purpose", "Value": "image-build"}],
        )["Role"]["Arn"]
        created = True
    iam.put_role_policy(RoleName=name, PolicyName=ROLE_POLICY,
                        PolicyDocument=json.dumps(role_policy(region, account, repository_arn, bucket)))
    return arn, created


def ensure_project(cb: Any, role_arn: str, source_location: str, *, role_wait_s: float = ROLE_WAIT_S,
                   sleep: Callable[[float], None] = time.sleep) -> bool:
    """The CodeBuild project, created when absent; True when created now. A role created a
    moment ago may not be assumable yet: creation is retried for up to role_wait_s."""
    if cb.batch_get_projects(names=[PROJECT]).get("projects"):
        return False
    deadline = time.monotonic() + role_wait_s
    while True:
        try:
            cb.create_project(
                name=PROJECT,
                description="smvision serving images (smvision image push --remote)",
                source={"type": "S3", "location": source_location},
                artifacts={"type": "NO_ARTIFACTS"},
                environment={"type": "LINUX_CONTAINER", "image": BUILD_IMAGE, "computeType": COMPUTE["cpu"],
                             "privilegedMode": True},
                serviceRole=role_arn,
                timeoutInMinutes=BUILD_TIMEOUT_MIN["cpu"],
                queuedTimeoutInMinutes=QUEUE_TIMEOUT_MIN,
                logsConfig={"cloudWatchLogs": {"status": "ENABLED", "groupName": log_group()}},
                tags=[{"key": "smvision:purpose", "value": "image-build"}],
            )
            return True
        except ClientError as exc:
            assumable_later = error_code(exc) == "InvalidInputException" and "AssumeRole" in error_message(exc)
            if not assumable_later or time.monotonic() >= deadline:
                raise
            sleep(5.0)


def buildspec() -> str:
    """Log in to ECR, build for PLATFORM, push (JSON is YAML too). Variables come from StartBuild."""
    return json.dumps({
        "version": 0.2,
        "phases": {
            "pre_build": {"commands": [
                'aws ecr get-login-password --region "$AWS_DEFAULT_REGION" '
                '| docker login --username AWS --password-stdin "$REGISTRY"',
            ]},
            "build": {"commands": [
                'docker build --platform "$PLATFORM" -f "$DOCKERFILE" -t "$IMAGE_URI" '
                '--label "org.opencontainers.image.version=$IMAGE_VERSION" '
                '--label "org.opencontainers.image.revision=$SOURCE_DIGEST" .',
                'docker push "$IMAGE_URI"',
            ]},
        },
    }, indent=2)


@dataclass(frozen=True)
class BuildRequest:
    """One build: where its source is, what it builds and where the image goes."""

    context: BuildContext
    source_location: str  # bucket/key
    image_uri: str
    registry: str
    role_arn: str

    def start_build_arguments(self) -> dict[str, Any]:
        processor = self.context.processor
        variables = {"IMAGE_URI": self.image_uri, "REGISTRY": self.registry, "DOCKERFILE": self.context.dockerfile,
                     "PLATFORM": PLATFORM, "IMAGE_VERSION": self.context.version,
                     "SOURCE_DIGEST": self.context.digest}
        return {
            "projectName": PROJECT,
            "sourceTypeOverride": "S3",
            "sourceLocationOverride": self.source_location,
            "buildspecOverride": buildspec(),
            "environmentTypeOverride": "LINUX_CONTAINER",
            "imageOverride": BUILD_IMAGE,
            "computeTypeOverride": COMPUTE[processor],
            "privilegedModeOverride": True,
            "serviceRoleOverride": self.role_arn,
            "timeoutInMinutesOverride": BUILD_TIMEOUT_MIN[processor],
            "environmentVariablesOverride": [{"name": name, "value": value, "type": "PLAINTEXT"}
                                             for name, value in variables.items()],
            "logsConfigOverride": {"cloudWatchLogs": {"status": "ENABLED", "groupName": log_group()}},
        }


def start_build(cb: Any, request: BuildRequest) -> str:
    """StartBuild; returns the build id (`smvision-image-build:<uuid>`)."""
    return cb.start_build(**request.start_build_arguments())["build"]["id"]


class LogTail:
    """New lines of the build's CloudWatch log stream, from its start; nothing while it does not exist yet."""

    def __init__(self, logs: Any, group: str, stream: str) -> None:
        self.logs, self.group, self.stream = logs, group, stream
        self.token: str | None = None

    def lines(self) -> list[str]:
        found: list[str] = []
        while True:
            options: dict[str, Any] = {"logGroupName": self.group, "logStreamName": self.stream, "startFromHead": True}
            if self.token:
                options["nextToken"] = self.token
            try:
                page = self.logs.get_log_events(**options)
            except ClientError as exc:
                if error_code(exc) == "ResourceNotFoundException":
                    return found
                raise
            found += [event["message"].rstrip("\n") for event in page.get("events", [])]
            token = page.get("nextForwardToken")
            if not token or token == self.token:
                return found
            self.token = token


def log_names(build: dict[str, Any]) -> tuple[str, str]:
    """The build's log group and stream (CodeBuild names them once the build runs; before, the defaults)."""
    logs = build.get("logs") or {}
    stream = build["id"].split(":", 1)[-1]
    return logs.get("groupName") or log_group(build.get("projectName") or PROJECT), logs.get("streamName") or stream


def failure_message(build: dict[str, Any]) -> str:
    """`CodeBuild build ID FAILED in phase BUILD (what it does): CODE: message; log: URL`."""
    status = build.get("buildStatus", "?")
    failed = [p for p in build.get("phases", []) if p.get("phaseStatus") not in (None, "SUCCEEDED")]
    phase = failed[0] if failed else {"phaseType": build.get("currentPhase", "?")}
    name = phase.get("phaseType", "?")
    contexts = "; ".join(
        f"{c.get('statusCode')}: {c.get('message')}" if c.get("statusCode") else str(c.get("message"))
        for c in phase.get("contexts", []) if c.get("message")
    )
    message = f"CodeBuild build {build['id']} {status} in phase {name} ({PHASES.get(name, 'a build step')})"
    message += f": {contexts}" if contexts else ""
    link = (build.get("logs") or {}).get("deepLink")
    return message + (f"; log: {link}" if link and "group=null" not in link else "")


def wait_for_build(cb: Any, logs: Any, build_id: str, *, timeout_s: float, poll_s: float = 10.0,
                   report: Report = report_to_stderr) -> dict[str, Any]:
    """Poll until the build ends, reporting phase changes and streaming its log. Returns it when
    it SUCCEEDED; BuildError naming the failed phase otherwise, or when timeout_s passes first
    (the build goes on in CodeBuild)."""
    started = time.monotonic()
    tail: LogTail | None = None
    last_phase = None
    while True:
        builds = cb.batch_get_builds(ids=[build_id]).get("builds") or []
        if not builds:
            raise BuildError(f"CodeBuild build {build_id} disappeared while waiting for it")
        build = builds[0]
        elapsed = time.monotonic() - started
        phase, status = build.get("currentPhase"), build.get("buildStatus")
        if phase != last_phase:
            report(f"build {build_id}: {phase} ({elapsed:.0f} s)")
            last_phase = phase
        if tail is None:
            tail = LogTail(logs, *log_names(build))
        for line in tail.lines():
            report(f"  | {line}")
        if status == "SUCCEEDED":
            return build
        if status in FINISHED:
            raise BuildError(failure_message(build))
        if elapsed >= timeout_s:
            raise BuildError(
                f"CodeBuild build {build_id} still {status} in phase {phase} after {timeout_s:g} s; it goes on in "
                f"CodeBuild (`aws codebuild batch-get-builds --ids {build_id}`; stop it with "
                f"`aws codebuild stop-build --id {build_id}`). Once it has succeeded, `deploy create` finds the "
                "image by its tag in ECR."
            )
        time.sleep(min(poll_s, max(0.0, timeout_s - elapsed)))
