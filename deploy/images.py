"""The AWS PyTorch 2.6 inference image (the "DLC") for a region and instance type.

The same answer as `sagemaker.core.image_uris.retrieve("pytorch", region, version="2.6",
py_version="py312", image_scope="inference", instance_type=...)`, from the same published
data (sagemaker-core 2.27.0, image_uri_config/pytorch.json, inference 2.6.0): the image
lives in an account per region, repository `pytorch-inference`, tag
`2.6.0-{cpu|gpu}-py312`. sagemaker-core is not a dependency: it pulls in pandas, scipy,
paramiko, cryptography, omegaconf and more for this one lookup.

Since the image passed its end of support, `deploy create` and `transform` use it only when
asked (`--image pytorch-2.6-dlc`, serving_image.py); processor() also picks our own image's
flavour for an instance type.
"""

from __future__ import annotations

import re

FRAMEWORK_VERSION = "2.6.0"
PY_VERSION = "py312"
REPOSITORY = "pytorch-inference"

#: region -> ECR account holding the PyTorch inference DLCs (pytorch.json, inference 2.6.0)
ACCOUNTS = {
    "af-south-1": "626614931356",
    "ap-east-1": "871362719292",
    "ap-east-2": "975050140332",
    "ap-northeast-1": "763104351884",
    "ap-northeast-2": "763104351884",
    "ap-northeast-3": "364406365360",
    "ap-south-1": "763104351884",
    "ap-south-2": "772153158452",
    "ap-southeast-1": "763104351884",
    "ap-southeast-2": "763104351884",
    "ap-southeast-3": "907027046896",
    "ap-southeast-4": "457447274322",
    "ap-southeast-5": "550225433462",
    "ap-southeast-6": "633930458069",
    "ap-southeast-7": "590183813437",
    "ca-central-1": "763104351884",
    "ca-west-1": "204538143572",
    "cn-north-1": "727897471807",
    "cn-northwest-1": "727897471807",
    "eu-central-1": "763104351884",
    "eu-central-2": "380420809688",
    "eu-north-1": "763104351884",
    "eu-south-1": "692866216735",
    "eu-south-2": "503227376785",
    "eu-west-1": "763104351884",
    "eu-west-2": "763104351884",
    "eu-west-3": "763104351884",
    "il-central-1": "780543022126",
    "me-central-1": "914824155844",
    "me-south-1": "217643126080",
    "me-west-1": "124382933778",
    "mx-central-1": "637423239942",
    "sa-east-1": "763104351884",
    "us-east-1": "763104351884",
    "us-east-2": "763104351884",
    "us-gov-east-1": "446045086412",
    "us-gov-west-1": "442386744353",
    "us-west-1": "763104351884",
    "us-west-2": "763104351884",
}


def processor(instance_type: str | None) -> str:
    """'gpu' for ml.g* / ml.p* instances (CUDA), else 'cpu': ml.c*, m*, r*, t* and the other
    x86_64 families (serverless endpoints: no type, cpu). Inferentia / Trainium (ml.inf*,
    ml.trn*: Neuron) and Graviton (ml.c7g, ml.m6g, ...: arm64) need an image built for them:
    ValueError saying to pass --image."""
    if not instance_type:
        return "cpu"
    parts = instance_type.split(".")
    if len(parts) != 3 or parts[0] != "ml" or not parts[1]:
        raise ValueError(f"instance type must look like ml.c6i.xlarge, got {instance_type!r}")
    family = parts[1]
    if family.startswith(("inf", "trn")):
        raise ValueError(f"{instance_type}: Inferentia/Trainium need a Neuron image; pass --image")
    if re.fullmatch(r"[a-z]+\d+g[a-z]*", family):
        raise ValueError(f"{instance_type} is a Graviton (arm64) instance; the images here are x86_64: pass --image "
                         "with an arm64 image, or pick an x86_64 type (ml.c6i, ml.m6i, ...)")
    return "gpu" if family[0] in ("g", "p") else "cpu"


def pytorch_inference_image(region: str, instance_type: str | None) -> str:
    """The AWS PyTorch 2.6 inference image URI for region and instance type."""
    account = ACCOUNTS.get(region)
    if account is None:
        raise ValueError(f"no AWS PyTorch 2.6 inference image is published in region {region!r}; pass --image")
    domain = "amazonaws.com.cn" if region.startswith("cn-") else "amazonaws.com"
    tag = f"{FRAMEWORK_VERSION}-{processor(instance_type)}-{PY_VERSION}"
    return f"{account}.dkr.ecr.{region}.{domain}/{REPOSITORY}:{tag}"
