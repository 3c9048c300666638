"""The host AMI (NVIDIA driver) that `deploy create` and `transform` ask SageMaker for.

Checked as a user checks it, through describe_endpoint_config / describe_transform_job on
moto's server (which keeps InferenceAmiVersion and TransformAmiVersion as sent): by default
the newest GPU AMI on the GPU families known to take it, what --inference-ami-version /
--transform-ami-version say otherwise, nothing on CPU and serverless, and a usage error
before any call for a value that cannot apply.
"""

from __future__ import annotations

import boto3
import pytest

import moto_sagemaker
from smvision.cli import main
from smvision.deploy import amis

ROLE = "arn:aws:iam::123456789012:role/SageMakerRole"
DATA = "s3://smvision-models/d0/dev/20261126T120000Z/model.tar.gz"
IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/smvision:gpu"
NEWEST = "al2023-ami-sagemaker-inference-gpu-4-1"
MODEL = "d0-20261126120000000"


@pytest.fixture(scope="module")
def sm(tmp_path_factory):
    with moto_sagemaker.running(tmp_path_factory.mktemp("moto-ami") / "moto.log"):
        client = boto3.client("sagemaker")
        client.create_model(ModelName=MODEL, ExecutionRoleArn=ROLE,
                            PrimaryContainer={"Image": IMAGE, "ModelDataUrl": DATA})
        yield client


def deploy(*args: str) -> int:
    return main(["deploy", "create", "--role", ROLE, "--model-data", DATA, "--image", IMAGE, "--poll", "0.05", *args])


def variant_of(sm, endpoint: str) -> dict:
    config = sm.describe_endpoint(EndpointName=endpoint)["EndpointConfigName"]
    (variant,) = sm.describe_endpoint_config(EndpointConfigName=config)["ProductionVariants"]
    return variant


# (moto's CreateEndpointConfig knows the GPU instance types ml.g4dn, ml.p2 and ml.p3 only)
@pytest.mark.parametrize("instance_type, args, expected", [
    ("ml.g4dn.xlarge", [], NEWEST),  # SageMaker's default there: driver 470
    ("ml.g4dn.2xlarge", ["--inference-ami-version", "al2-ami-sagemaker-inference-gpu-3-1"],
     "al2-ami-sagemaker-inference-gpu-3-1"),
    ("ml.g4dn.4xlarge", ["--inference-ami-version", "none"], None),
    ("ml.p3.2xlarge", [], None),  # no AMI known to serve p3: the family's default
    ("ml.c5.xlarge", [], None),
], ids=["g4dn-default", "g4dn-given", "g4dn-none", "p3-unknown", "cpu"])
def test_endpoint_config_asks_for_the_host_ami(sm, capsys, instance_type, args, expected):
    name = f"ami-{instance_type.replace('.', '-')}"
    assert deploy("--name", name, "--instance-type", instance_type, *args) == 0
    variant = variant_of(sm, name)
    assert variant.get("InferenceAmiVersion") == expected
    err = capsys.readouterr().err
    if expected:
        assert f", host AMI {amis.describe(expected)}" in err
    if instance_type == "ml.p3.2xlarge":
        assert "ml.p3.2xlarge: the instance family's default host AMI" in err


@pytest.mark.parametrize("args, message", [
    (["--instance-type", "ml.c5.xlarge", "--inference-ami-version", NEWEST],
     f"--inference-ami-version {NEWEST} is a GPU host AMI; ml.c5.xlarge has no GPU"),
    (["--serverless", "2048", "--inference-ami-version", NEWEST], "does not apply to a serverless endpoint"),
    (["--instance-type", "ml.g5.xlarge", "--inference-ami-version", "al2-ami-sagemaker-inference-gpu-9"],
     "--inference-ami-version must be one of al2-ami-sagemaker-inference-gpu-2, "),
], ids=["cpu", "serverless", "unknown"])
def test_an_ami_that_cannot_apply_is_a_usage_error_before_any_call(sm, capsys, args, message):
    assert deploy("--name", "ami-bad", *args) == 2
    assert message in capsys.readouterr().err
    with pytest.raises(sm.exceptions.ClientError):
        sm.describe_endpoint(EndpointName="ami-bad")


def transform(*args: str) -> int:
    return main(["transform", "--model-name", MODEL, "--input", "s3://batch/in/", "--output", "s3://batch/out/",
                 "--no-wait", *args])


@pytest.mark.parametrize("instance_type, args, expected", [
    ("ml.g5.xlarge", [], "al2-ami-sagemaker-batch-gpu-535"),  # SageMaker's default there: driver 470
    ("ml.g4dn.xlarge", ["--transform-ami-version", "al2-ami-sagemaker-batch-gpu-470"],
     "al2-ami-sagemaker-batch-gpu-470"),
    ("ml.g6.xlarge", ["--transform-ami-version", "none"], None),
    ("ml.c5.xlarge", [], None),
], ids=["g5-default", "g4dn-given", "g6-none", "cpu"])
def test_transform_job_asks_for_the_host_ami(sm, capsys, instance_type, args, expected):
    job = f"ami-job-{instance_type.split('.')[1]}-{len(args)}"
    assert transform("--instance-type", instance_type, "--job-name", job, *args) == 0
    resources = sm.describe_transform_job(TransformJobName=job)["TransformResources"]
    assert resources.get("TransformAmiVersion") == expected
    assert resources["InstanceType"] == instance_type
    if expected:
        assert f"transform job {job} created, host AMI {expected} (NVIDIA driver" in capsys.readouterr().err


def test_transform_gpu_ami_on_a_cpu_job_is_a_usage_error(sm, capsys):
    assert transform("--instance-type", "ml.c5.xlarge", "--job-name", "ami-job-bad",
                     "--transform-ami-version", "al2-ami-sagemaker-batch-gpu-535") == 2
    assert "al2-ami-sagemaker-batch-gpu-535 is a GPU host AMI; ml.c5.xlarge has no GPU" in capsys.readouterr().err


@pytest.mark.parametrize("instance_type, expected", [
    ("ml.g5.xlarge", NEWEST), ("ml.g6e.2xlarge", NEWEST), ("ml.p4d.24xlarge", NEWEST),
    ("ml.p5.48xlarge", NEWEST), ("ml.p5e.48xlarge", NEWEST), ("ml.p5en.48xlarge", NEWEST),
    ("ml.p3.2xlarge", None), ("ml.inf2.xlarge", None), ("ml.m5.large", None), (None, None),
])
def test_default_inference_ami_per_family(instance_type, expected):
    assert amis.inference_ami(None, instance_type, available=amis.sdk_inference_amis()) == expected


def test_the_ami_table_knows_every_gpu_ami_the_sdk_lists():
    """When botocore lists a new GPU inference AMI, the table (drivers, the newest) must learn it."""
    listed = [name for name in amis.sdk_inference_amis() if "-gpu-" in name]
    assert set(listed) <= set(amis.INFERENCE_GPU_AMIS), sorted(set(listed) - set(amis.INFERENCE_GPU_AMIS))
    assert amis.newest(amis.INFERENCE_GPU_AMIS, amis.sdk_inference_amis()) == NEWEST
