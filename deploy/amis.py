"""Which host AMI (and so which NVIDIA driver) a GPU endpoint or batch transform job gets.

SageMaker's GPU hosts run driver 470 by default on ml.g4dn / g5 / p3 / p4d, 535 on p5 and
g6, 550 on p5e / p5en; CreateEndpointConfig's ProductionVariant.InferenceAmiVersion and
CreateTransformJob's TransformResources.TransformAmiVersion pick another one. The image
copes with every one of them (container/gpu.py); the newest driver needs no forward
compatibility at all, so `deploy create` and `transform` ask for the newest AMI on the GPU
families it is known to serve, unless told otherwise (`--inference-ami-version NAME|none`,
`--transform-ami-version NAME|none`).

Names, drivers and families: botocore's SageMaker model (the ProductionVariant enum and the
TransformAmiVersion documentation) and SageMaker's "inference-gpu-drivers" page; the
families that take al2023-ami-sagemaker-inference-gpu-4-1 and al2-ami-sagemaker-batch-gpu-535
are those AWS's own deployment examples use them on.
"""

from __future__ import annotations

import re

NONE = "none"

#: InferenceAmiVersion -> (NVIDIA driver branch, CUDA version of that driver); GPU AMIs only
INFERENCE_GPU_AMIS = {
    "al2-ami-sagemaker-inference-gpu-2": ("535", "12.2"),
    "al2-ami-sagemaker-inference-gpu-2-1": ("535", "12.2"),
    "al2-ami-sagemaker-inference-gpu-3-1": ("550", "12.4"),
    "al2023-ami-sagemaker-inference-gpu-4-1": ("580", "13.0"),
}
#: TransformAmiVersion -> NVIDIA driver branch
TRANSFORM_GPU_AMIS = {
    "al2-ami-sagemaker-batch-gpu-470": ("470", "11.4"),
    "al2-ami-sagemaker-batch-gpu-535": ("535", "12.2"),
}
#: instance families (ml.<family>.<size>) that take the newest AMI of each kind by default
INFERENCE_DEFAULT_FAMILIES = ("g4dn", "g5", "g6", "g6e", "g7e", "p4d", "p4de", "p5", "p5e", "p5en", "p6-b200")
TRANSFORM_DEFAULT_FAMILIES = ("g4dn", "g5", "g6", "g6e")
#: what SageMaker's API accepts for an AMI version name
AMI_NAME = re.compile(r"[a-zA-Z0-9]+(-[a-zA-Z0-9]+)*")


def newest(amis: dict[str, tuple[str, str]], available: tuple[str, ...] | None = None) -> str:
    """The AMI with the newest driver (of those the SDK lists, when given)."""
    names = [name for name in amis if available is None or name in available]
    return max(names, key=lambda name: (int(amis[name][0]), name))


def _family(instance_type: str | None) -> str | None:
    """'g5' for ml.g5.xlarge; None for anything else."""
    parts = (instance_type or "").split(".")
    return parts[1] if len(parts) == 3 and parts[0] == "ml" and parts[1] else None


def is_gpu_instance(instance_type: str | None) -> bool:
    """An NVIDIA GPU instance type (ml.g*, ml.p*), as deploy.images decides the image."""
    family = _family(instance_type)
    return family is not None and family[0] in ("g", "p")


def _resolve(option: str, value: str | None, instance_type: str | None, amis: dict[str, tuple[str, str]],
             families: tuple[str, ...], available: tuple[str, ...] | None) -> str | None:
    """value as given (checked), None for `none`, or the default for instance_type."""
    gpu = is_gpu_instance(instance_type)
    if value is None:
        return newest(amis, available) if gpu and _family(instance_type) in families else None
    if value.lower() == NONE:
        return None
    known = tuple(available) if available is not None else tuple(amis)
    if (available is not None and value not in available) or not AMI_NAME.fullmatch(value):
        raise ValueError(f"{option} must be one of {', '.join(known)} or {NONE}, got {value!r}")
    if value in amis and not gpu:
        raise ValueError(f"{option} {value} is a GPU host AMI; {instance_type or 'a serverless endpoint'} "
                         "has no GPU (leave it out, or pass none)")
    return value


def inference_ami(value: str | None, instance_type: str | None, serverless: bool = False,
                  available: tuple[str, ...] | None = None) -> str | None:
    """The InferenceAmiVersion for `deploy create`: value (a name from `available`, the SDK's
    list, or `none`), or by default the newest GPU AMI on the families known to take it, and
    nothing elsewhere (CPU, serverless, other GPU families: SageMaker's default)."""
    if serverless:
        if value is not None and value.lower() != NONE:
            raise ValueError("--inference-ami-version does not apply to a serverless endpoint")
        return None
    return _resolve("--inference-ami-version", value, instance_type, INFERENCE_GPU_AMIS,
                    INFERENCE_DEFAULT_FAMILIES, available)


def transform_ami(value: str | None, instance_type: str | None) -> str | None:
    """The TransformAmiVersion for `transform`: value (or `none`), or by default the newest
    batch GPU AMI on the families known to take it, nothing elsewhere."""
    return _resolve("--transform-ami-version", value, instance_type, TRANSFORM_GPU_AMIS,
                    TRANSFORM_DEFAULT_FAMILIES, None)


def sdk_inference_amis() -> tuple[str, ...]:
    """The InferenceAmiVersion names the installed botocore knows (its ProductionVariant enum)."""
    import botocore.session

    model = botocore.session.get_session().get_service_model("sagemaker")
    return tuple(model.shape_for("ProductionVariantInferenceAmiVersion").enum)


def describe(ami: str | None) -> str:
    """'al2023-ami-sagemaker-inference-gpu-4-1 (NVIDIA driver 580, CUDA 13.0)', or SageMaker's default."""
    if ami is None:
        return "the instance family's default host AMI"
    branch = INFERENCE_GPU_AMIS.get(ami) or TRANSFORM_GPU_AMIS.get(ami)
    return f"{ami} (NVIDIA driver {branch[0]}, CUDA {branch[1]})" if branch else ami
