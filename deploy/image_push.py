"""`smvision image build` and `smvision image push`: our serving image, from a checkout to ECR.

push: the build context and its tag (build_context), the ECR repository (created when
absent), then either the local engine (login with the ECR token, build, tag, push) or,
with remote, AWS CodeBuild (codebuild); finally the URI is recorded (image_record) for
`deploy create` and `transform`. An image whose tag is already in the repository (same
package version, same inputs) is not built again unless asked.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from smvision.deploy import aws, build_context, codebuild, ecr, image_record
from smvision.deploy.engine import Engine, find_engine
from smvision.deploy.progress import Report, report_to_stderr


@dataclass(frozen=True)
class PushOptions:
    """What `smvision image push` was asked for."""

    processor: str
    region: str | None = None
    repository: str = ecr.DEFAULT_REPOSITORY
    keep: int = ecr.DEFAULT_KEEP
    remote: bool = False
    engine: str | None = None
    context: str | None = None
    bucket: str | None = None
    service_role: str | None = None
    rebuild: bool = False
    timeout_s: float | None = None
    poll_s: float = 10.0


def build_local(processor: str, engine_name: str | None = None, context_dir: str | None = None,
                report: Report = report_to_stderr) -> str:
    """Build the image with the local engine as smvision:<tag> (and smvision:<processor>); returns smvision:<tag>."""
    context = build_context.load(build_context.find_root(context_dir), processor)
    return _build(find_engine(engine_name), context, report)


def _build(engine: Engine, context: build_context.BuildContext, report: Report) -> str:
    """`<engine> build` of the context as smvision:<tag> and smvision:<processor>; returns the first."""
    local = f"smvision:{context.tag}"
    report(f"building {context.dockerfile} ({len(context.files)} files, {build_context.PLATFORM}) with {engine.name}")
    engine.build(context.root, context.dockerfile, [local, f"smvision:{context.processor}"], build_context.PLATFORM,
                 context.labels)
    return local


def push(options: PushOptions, report: Report = report_to_stderr) -> str:
    """Build and push the image, record it; returns its URI (REGISTRY/REPOSITORY:TAG)."""
    context = build_context.load(build_context.find_root(options.context), options.processor)
    engine = None if options.remote else find_engine(options.engine)  # no engine: say so before any AWS call
    region = options.region or aws.region_name()
    account = aws.client("sts", region).get_caller_identity()["Account"]
    registry = aws.client("ecr", region)
    repository = ecr.ensure_repository(registry, options.repository, options.keep)
    uri = f"{repository.uri}:{context.tag}"
    report(f"repository {repository.uri}: " + (
        f"created (scan on push; lifecycle: the newest {options.keep} images per processor stay)"
        if repository.created else "exists"))
    if not options.rebuild and ecr.image_exists(registry, repository.name, context.tag):
        report(f"{uri} is in ECR already (same version, same inputs): not built again (--rebuild to force)")
    elif options.remote:
        _push_remote(options, context, repository, uri, account, region, report)
    else:
        assert engine is not None
        _push_local(engine, registry, context, uri, report)
    path = image_record.record(account, region, options.processor, uri=uri, repository=repository.name,
                               tag=context.tag, version=context.version, source_digest=context.digest)
    report(f"recorded in {path} for {account}/{region}/{options.processor}")
    return uri


def _push_local(engine: Engine, registry: Any, context: build_context.BuildContext, uri: str,
                report: Report) -> None:
    host, username, password = ecr.login_secret(registry)
    engine.login(host, username, password)
    engine.tag(_build(engine, context, report), uri)
    engine.push(uri)


def _push_remote(options: PushOptions, context: build_context.BuildContext, repository: ecr.Repository, uri: str,
                 account: str, region: str, report: Report) -> None:
    s3 = aws.client("s3", region)
    bucket = options.bucket or codebuild.default_bucket(account, region)
    if codebuild.ensure_bucket(s3, bucket, region):
        report(f"bucket s3://{bucket}: created (private; build sources expire after {codebuild.SOURCE_DAYS} days)")
    source = codebuild.upload_source(s3, bucket, context)
    report(f"build context ({len(context.files)} files) -> s3://{source}")
    if options.service_role:
        role_arn = options.service_role
    else:
        role_arn, created = codebuild.ensure_service_role(aws.client("iam", region), region, account,
                                                          repository.arn, bucket)
        report(f"service role {role_arn}: {'created' if created else 'exists'} (may push to {repository.name} only)")
    cb = aws.client("codebuild", region)
    created = codebuild.ensure_project(cb, role_arn, source)
    report(f"CodeBuild project {codebuild.PROJECT}: {'created' if created else 'exists, reused'}")
    request = codebuild.BuildRequest(context, source, uri, repository.registry, role_arn)
    build_id = codebuild.start_build(cb, request)
    report(f"build {build_id} started ({codebuild.COMPUTE[context.processor]}); its log follows")
    timeout_s = options.timeout_s
    if timeout_s is None:  # CodeBuild's own limit ends the build first, with its TIMED_OUT
        timeout_s = 60.0 * (codebuild.BUILD_TIMEOUT_MIN[context.processor] + codebuild.QUEUE_TIMEOUT_MIN)
    codebuild.wait_for_build(cb, aws.client("logs", region), build_id, timeout_s=timeout_s, poll_s=options.poll_s,
                             report=report)
    report(f"build {build_id} SUCCEEDED: {uri}")
