"""Autoscaling of an endpoint variant: target tracking on invocations per instance.

Application Auto Scaling owns this: the variant is a scalable target
(`endpoint/<name>/variant/<variant>`, dimension DesiredInstanceCount) between MIN and MAX
instances, and one target-tracking policy on SageMakerVariantInvocationsPerInstance
(invocations per instance per minute) moves it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

NAMESPACE = "sagemaker"
DIMENSION = "sagemaker:variant:DesiredInstanceCount"
METRIC = "SageMakerVariantInvocationsPerInstance"


@dataclass(frozen=True)
class Scaling:
    """MIN:MAX instances, and the invocations per instance per minute to hold."""

    min_capacity: int
    max_capacity: int
    target_invocations: float = 100.0
    scale_in_cooldown_s: int = 300
    scale_out_cooldown_s: int = 60

    @classmethod
    def parse(cls, text: str, target_invocations: float = 100.0) -> "Scaling":
        """'MIN:MAX' -> Scaling; raises ValueError saying what is wrong."""
        try:
            low, high = (int(part) for part in text.split(":"))
        except ValueError:
            raise ValueError(f"--autoscale must be MIN:MAX instance counts, e.g. 1:4, got {text!r}") from None
        if low < 1 or high < low:
            raise ValueError(f"--autoscale needs 1 <= MIN <= MAX, got {text!r}")
        if target_invocations <= 0:
            raise ValueError(f"the target invocations per instance must be positive, got {target_invocations}")
        return cls(low, high, target_invocations)


def resource_id(endpoint: str, variant: str) -> str:
    return f"endpoint/{endpoint}/variant/{variant}"


def policy_name(endpoint: str) -> str:
    return f"{endpoint}-invocations-per-instance"


def enable(client: Any, endpoint: str, variant: str, scaling: Scaling) -> str:
    """Register the variant as a scalable target and attach the policy; returns its name."""
    resource = resource_id(endpoint, variant)
    client.register_scalable_target(
        ServiceNamespace=NAMESPACE,
        ResourceId=resource,
        ScalableDimension=DIMENSION,
        MinCapacity=scaling.min_capacity,
        MaxCapacity=scaling.max_capacity,
    )
    name = policy_name(endpoint)
    client.put_scaling_policy(
        PolicyName=name,
        ServiceNamespace=NAMESPACE,
        ResourceId=resource,
        ScalableDimension=DIMENSION,
        PolicyType="TargetTrackingScaling",
        TargetTrackingScalingPolicyConfiguration={
            "TargetValue": float(scaling.target_invocations),
            "PredefinedMetricSpecification": {"PredefinedMetricType": METRIC},
            "ScaleInCooldown": scaling.scale_in_cooldown_s,
            "ScaleOutCooldown": scaling.scale_out_cooldown_s,
        },
    )
    return name


def registered(client: Any, endpoint: str, variant: str) -> bool:
    """Whether the variant is a scalable target now."""
    answer = client.describe_scalable_targets(
        ServiceNamespace=NAMESPACE, ResourceIds=[resource_id(endpoint, variant)], ScalableDimension=DIMENSION
    )
    return bool(answer.get("ScalableTargets"))


def disable(client: Any, endpoint: str, variant: str) -> list[str]:
    """Remove the variant's scaling policies and scalable target; returns what was removed.

    Quiet when there is nothing (an endpoint deployed without --autoscale).
    """
    resource = resource_id(endpoint, variant)
    removed = []
    policies = client.describe_scaling_policies(
        ServiceNamespace=NAMESPACE, ResourceId=resource, ScalableDimension=DIMENSION
    ).get("ScalingPolicies", [])
    for policy in policies:
        if _quietly(client.delete_scaling_policy, PolicyName=policy["PolicyName"], ServiceNamespace=NAMESPACE,
                    ResourceId=resource, ScalableDimension=DIMENSION):
            removed.append(f"scaling policy {policy['PolicyName']}")
    if registered(client, endpoint, variant) and _quietly(
        client.deregister_scalable_target, ServiceNamespace=NAMESPACE, ResourceId=resource, ScalableDimension=DIMENSION
    ):
        removed.append(f"scalable target {resource}")
    return removed


def _quietly(call: Any, **kwargs: Any) -> bool:
    """Run a delete; False if the thing was already gone."""
    try:
        call(**kwargs)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("ObjectNotFoundException", "ValidationException"):
            return False
        raise
    return True
