"""Which container image `deploy create` and `transform` give SageMaker.

- no `--image`: our own image for the region and the instance's processor (images.processor:
  cpu, or gpu for ml.g* / ml.p*): the one `smvision image push` recorded for this account
  and region (image_record) if it is of this smvision's version, else the newest image in
  the ECR repository tagged `<processor>-<version>-...`; with neither, an error that says
  to run `smvision image push cpu|gpu`;
- `--image pytorch-2.6-dlc`: the AWS PyTorch 2.6 inference image, with a warning (past its
  end of support; pip-installs code/requirements.txt at every start);
- `--image URI`: that image.
"""

from __future__ import annotations

import importlib.metadata
from typing import Any

from smvision.deploy import ecr, image_record
from smvision.deploy.aws import AwsError
from smvision.deploy.images import processor, pytorch_inference_image
from smvision.deploy.progress import Report, report_to_stderr

DLC = "pytorch-2.6-dlc"
DLC_WARNING = (
    "warning: the AWS PyTorch 2.6 inference image passed its end of support on 2026-06-30 (no newer PyTorch "
    "inference image with TorchServe will come) and pip-installs code/requirements.txt at every start: each "
    "instance it starts needs PyPI (or CodeArtifact), so it cannot serve from a VPC without internet. "
    "Our image has everything baked in: `smvision image push {processor}`, then deploy without --image."
)


class NoImageError(AwsError):
    """No image of ours for this account, region and processor; the message says how to push one."""


def installed_version() -> str:
    return importlib.metadata.version("smvision")


def choose_image(requested: str | None, region: str, instance_type: str | None, *, sts: Any = None,
                 registry: Any = None, report: Report = report_to_stderr) -> str:
    """The image URI to deploy (see the module docstring). sts and registry (ECR) clients are
    needed only when requested is None."""
    if requested and requested != DLC:
        if "/" not in requested:
            raise ValueError(f"--image takes an image URI (ACCOUNT.dkr.ecr.REGION.amazonaws.com/REPOSITORY:TAG) "
                             f"or {DLC}, got {requested!r}")
        return requested  # any instance type: an image built for Inferentia or Graviton too
    kind = processor(instance_type)
    if requested == DLC:
        report(DLC_WARNING.format(processor=kind))
        return pytorch_inference_image(region, instance_type)
    account = sts.get_caller_identity()["Account"]
    version = installed_version()
    entry = image_record.recorded(account, region, kind)
    where = f"{account}/{region}/{kind}"
    if entry and entry.get("version") == version:
        report(f"image {entry['uri']}: pushed by `smvision image push {kind}` on {entry.get('pushed_at')}")
        return entry["uri"]
    note = (f" (the one recorded, {entry['uri']}, is smvision {entry.get('version')} and this is {version}: "
            "pass it as --image to use it anyway)") if entry else ""
    repository = entry.get("repository", ecr.DEFAULT_REPOSITORY) if entry else ecr.DEFAULT_REPOSITORY
    tag = ecr.newest_tag(registry, repository, f"{kind}-{version}-")
    if tag:
        uri = f"{_repository_uri(registry, repository)}:{tag}"
        report(f"image {uri}: the newest {kind} image of smvision {version} in ECR repository {repository}")
        return uri
    raise NoImageError(
        f"no smvision {kind} image of version {version} for {where} in ECR repository {repository}{note}: run "
        f"`smvision image push {kind} --region {region}` (with --remote where there is no docker, finch or podman), "
        f"or pass --image URI (--image {DLC} for the AWS PyTorch 2.6 image, past its end of support)"
    )


def _repository_uri(registry: Any, repository: str) -> str:
    return registry.describe_repositories(repositoryNames=[repository])["repositories"][0]["repositoryUri"]
