"""The ECR repository our serving images go to: created when absent, login, lookups by tag.

A repository this module creates scans every image on push, encrypts with AES256 and
carries a lifecycle policy: untagged images go after a day, and of each processor's tags
(`cpu-...`, `gpu-...`) the newest KEEP images stay, older ones are expired by ECR.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

from smvision.deploy.aws import error_code
from smvision.deploy.build_context import PROCESSORS

DEFAULT_REPOSITORY = "smvision"
DEFAULT_KEEP = 10


@dataclass(frozen=True)
class Repository:
    name: str
    uri: str  # ACCOUNT.dkr.ecr.REGION.amazonaws.com/NAME
    arn: str
    created: bool

    @property
    def registry(self) -> str:
        return self.uri.split("/", 1)[0]


def lifecycle_policy(keep: int) -> dict[str, Any]:
    """Untagged images expire after a day; the newest `keep` images per processor stay."""
    rules: list[dict[str, Any]] = [{
        "rulePriority": 1,
        "description": "untagged images (layers of replaced tags) after one day",
        "selection": {"tagStatus": "untagged", "countType": "sinceImagePushed", "countUnit": "days", "countNumber": 1},
        "action": {"type": "expire"},
    }]
    for priority, processor in enumerate(PROCESSORS, start=2):
        rules.append({
            "rulePriority": priority,
            "description": f"keep the newest {keep} {processor} images",
            "selection": {"tagStatus": "tagged", "tagPrefixList": [f"{processor}-"],
                          "countType": "imageCountMoreThan", "countNumber": keep},
            "action": {"type": "expire"},
        })
    return {"rules": rules}


def ensure_repository(ecr: Any, name: str, keep: int = DEFAULT_KEEP) -> Repository:
    """The repository, created (scan on push, lifecycle policy) when absent. An existing one is
    left as it is, except that it gets the lifecycle policy if it has none."""
    if keep < 1:
        raise ValueError(f"--keep must be at least 1, got {keep}")
    created = False
    try:
        description = ecr.describe_repositories(repositoryNames=[name])["repositories"][0]
    except ClientError as exc:
        if error_code(exc) != "RepositoryNotFoundException":
            raise
        description = ecr.create_repository(
            repositoryName=name,
            imageTagMutability="MUTABLE",
            imageScanningConfiguration={"scanOnPush": True},
            encryptionConfiguration={"encryptionType": "AES256"},
            tags=[{"Key": "smvision:purpose", "Value": "serving-image"}],
        )["repository"]
        created = True
    try:
        ecr.get_lifecycle_policy(repositoryName=name)
    except ClientError as exc:
        if error_code(exc) != "LifecyclePolicyNotFoundException":
            raise
        ecr.put_lifecycle_policy(repositoryName=name, lifecyclePolicyText=json.dumps(lifecycle_policy(keep)))
    return Repository(name, description["repositoryUri"], description["repositoryArn"], created)


def login_secret(ecr: Any) -> tuple[str, str, str]:
    """(registry host, user name, password) from the ECR authorization token (valid 12 hours)."""
    data = ecr.get_authorization_token()["authorizationData"][0]
    username, _, password = base64.b64decode(data["authorizationToken"]).decode().partition(":")
    return data["proxyEndpoint"].removeprefix("https://").rstrip("/"), username, password


def image_exists(ecr: Any, repository: str, tag: str) -> bool:
    """Whether repository holds an image tagged tag (False also when the repository does not exist)."""
    try:
        ecr.describe_images(repositoryName=repository, imageIds=[{"imageTag": tag}])
    except ClientError as exc:
        if error_code(exc) in ("ImageNotFoundException", "RepositoryNotFoundException"):
            return False
        raise
    return True


def newest_tag(ecr: Any, repository: str, prefix: str) -> str | None:
    """The tag starting with prefix of the image pushed last; None when there is none (or no repository)."""
    best: tuple[Any, str] | None = None
    try:
        for page in ecr.get_paginator("describe_images").paginate(repositoryName=repository,
                                                                  filter={"tagStatus": "TAGGED"}):
            for image in page.get("imageDetails", []):
                for tag in image.get("imageTags", []):
                    if tag.startswith(prefix) and (best is None or image["imagePushedAt"] > best[0]):
                        best = (image["imagePushedAt"], tag)
    except ClientError as exc:
        if error_code(exc) == "RepositoryNotFoundException":
            return None
        raise
    return best[1] if best else None
