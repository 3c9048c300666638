"""Which image `deploy create` and `transform --model-data` give SageMaker, against moto.

Without --image: our image for the region and the instance's processor, as `smvision image
push` recorded it or as found by tag in ECR; none is an error that says to push one. The
AWS PyTorch 2.6 image only when asked for, with a warning. Images are put in moto's ECR
here as `docker push` would have put them.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import time

import boto3
import pytest

import moto_sagemaker
from smvision.cli import main
from smvision.deploy import image_record

ACCOUNT = "123456789012"
ROLE = "arn:aws:iam::123456789012:role/SageMakerRole"
DATA = "s3://smvision-models/d0/dev/20261126T120000Z/model.tar.gz"
VERSION = importlib.metadata.version("smvision")


@pytest.fixture(scope="module")
def aws(tmp_path_factory):
    with moto_sagemaker.running(tmp_path_factory.mktemp("moto-serving-image") / "moto.log") as url:
        yield url


def registry(region: str) -> str:
    return f"{ACCOUNT}.dkr.ecr.{region}.amazonaws.com"


def pushed(region: str, *tags: str, repository: str = "smvision") -> list[str]:
    """Images in ECR as `docker push` leaves them (a second apart: ECR orders by push time)."""
    ecr = boto3.client("ecr", region_name=region)
    try:
        ecr.create_repository(repositoryName=repository)
    except ecr.exceptions.RepositoryAlreadyExistsException:
        pass
    for number, tag in enumerate(tags):
        if number:
            time.sleep(1.1)
        manifest = {"schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                    "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "size": 1,
                               "digest": "sha256:" + hashlib.sha256(tag.encode()).hexdigest()}, "layers": []}
        ecr.put_image(repositoryName=repository, imageTag=tag, imageManifest=json.dumps(manifest))
    return [f"{registry(region)}/{repository}:{tag}" for tag in tags]


def deploy(region: str, name: str, *args: str) -> int:
    return main(["deploy", "create", "--name", name, "--role", ROLE, "--model-data", DATA, "--poll", "0.05",
                 "--region", region, *args])


def image_of(region: str, endpoint: str) -> str:
    sm = boto3.client("sagemaker", region_name=region)
    config_name = sm.describe_endpoint(EndpointName=endpoint)["EndpointConfigName"]
    config = sm.describe_endpoint_config(EndpointConfigName=config_name)
    return sm.describe_model(ModelName=config["ProductionVariants"][0]["ModelName"])["PrimaryContainer"]["Image"]


def models(region: str) -> list[str]:
    return [m["ModelName"] for m in boto3.client("sagemaker", region_name=region).list_models()["Models"]]


def test_nothing_pushed_stops_with_what_to_run(aws, capsys):
    region = "eu-north-1"
    assert deploy(region, "d0-none", "--instance-type", "ml.g4dn.xlarge") == 1
    err = capsys.readouterr().err
    assert err.startswith(f"smvision: error: no smvision gpu image of version {VERSION} for {ACCOUNT}/{region}/gpu "
                          "in ECR repository smvision")
    assert f"run `smvision image push gpu --region {region}` (with --remote where there is no docker" in err
    assert models(region) == []  # nothing was made

    pushed(region, f"cpu-{VERSION}-aaaaaaaaaaaa")  # a cpu image does not serve a gpu instance
    assert deploy(region, "d0-none", "--instance-type", "ml.g4dn.xlarge") == 1
    assert "smvision image push gpu" in capsys.readouterr().err


def test_the_newest_image_of_this_version_and_processor_in_ecr(aws, capsys):
    region = "ap-northeast-1"
    older, newer, other_version, gpu = pushed(region, f"cpu-{VERSION}-000000000001", f"cpu-{VERSION}-000000000002",
                                              "cpu-0.0.1-000000000003", f"gpu-{VERSION}-000000000004")
    assert deploy(region, "d0-found", "--instance-type", "ml.m5.large") == 0
    assert image_of(region, "d0-found") == newer
    assert f"image {newer}: the newest cpu image of smvision {VERSION} in ECR repository smvision" in \
        capsys.readouterr().err
    assert deploy(region, "d0-found-gpu", "--instance-type", "ml.p3.2xlarge") == 0
    assert image_of(region, "d0-found-gpu") == gpu
    assert deploy(region, "d0-found-sls", "--serverless", "2048") == 0  # serverless: cpu
    assert image_of(region, "d0-found-sls") == newer


def test_the_recorded_image_first_then_by_tag_when_recorded_for_another_version(aws, capsys):
    region = "eu-west-1"
    (found,) = pushed(region, f"cpu-{VERSION}-00000000000a")
    (mine,) = pushed(region, f"cpu-{VERSION}-00000000000b", repository="team")
    image_record.record(ACCOUNT, region, "cpu", uri=mine, repository="team", tag=mine.rsplit(":", 1)[1],
                        version=VERSION, source_digest="b" * 64)
    assert deploy(region, "d0-recorded", "--instance-type", "ml.c5.xlarge") == 0
    assert image_of(region, "d0-recorded") == mine  # not the one found by tag in the default repository
    assert f"image {mine}: pushed by `smvision image push cpu`" in capsys.readouterr().err

    # recorded by another smvision version: not used unless asked for; the newest of this version instead
    old = f"{registry(region)}/smvision:cpu-0.0.1-00000000000c"
    image_record.record(ACCOUNT, region, "cpu", uri=old, repository="smvision", tag="cpu-0.0.1-00000000000c",
                        version="0.0.1", source_digest="c" * 64)
    assert deploy(region, "d0-recorded", "--instance-type", "ml.c5.xlarge") == 0
    assert image_of(region, "d0-recorded") == found
    # and with nothing of this version in its repository, the error names the recorded one
    boto3.client("ecr", region_name=region).batch_delete_image(repositoryName="smvision",
                                                               imageIds=[{"imageTag": found.rsplit(":", 1)[1]}])
    assert deploy(region, "d0-recorded", "--instance-type", "ml.c5.xlarge") == 1
    assert f"(the one recorded, {old}, is smvision 0.0.1 and this is {VERSION}: pass it as --image" in \
        capsys.readouterr().err


def test_the_pytorch_dlc_only_when_asked_and_with_a_warning(aws, capsys):
    region = "us-east-2"
    assert deploy(region, "d0-dlc", "--instance-type", "ml.g4dn.xlarge", "--image", "pytorch-2.6-dlc") == 0
    dlc = "763104351884.dkr.ecr.us-east-2.amazonaws.com/pytorch-inference:2.6.0-gpu-py312"
    assert image_of(region, "d0-dlc") == dlc
    err = capsys.readouterr().err
    assert "warning: the AWS PyTorch 2.6 inference image passed its end of support on 2026-06-30" in err
    assert "pip-installs code/requirements.txt at every start" in err and "`smvision image push gpu`" in err

    uri = "111122223333.dkr.ecr.us-east-2.amazonaws.com/mine:v1"
    assert deploy(region, "d0-uri", "--instance-type", "ml.c5.xlarge", "--image", uri) == 0
    assert image_of(region, "d0-uri") == uri
    assert "warning" not in capsys.readouterr().err

    assert deploy(region, "d0-typo", "--instance-type", "ml.c5.xlarge", "--image", "pytorch-2.6") == 2
    assert "--image takes an image URI" in capsys.readouterr().err


@pytest.mark.parametrize("instance_type, message", [
    ("ml.inf2.xlarge", "Neuron image"),
    ("ml.c7g.xlarge", "Graviton (arm64)"),
    ("ml.m6g.large", "Graviton (arm64)"),
])
def test_instances_our_images_cannot_run_are_refused_before_any_call(aws, instance_type, message, capsys):
    assert deploy("eu-south-1", "d0-arch", "--instance-type", instance_type) == 2
    assert message in capsys.readouterr().err
    assert models("eu-south-1") == []


def test_an_image_given_serves_any_instance_type(aws):
    neuron = "111122223333.dkr.ecr.eu-south-1.amazonaws.com/my-neuron-image:1"
    assert deploy("eu-south-1", "d0-neuron", "--instance-type", "ml.inf1.xlarge", "--image", neuron) == 0
    assert image_of("eu-south-1", "d0-neuron") == neuron


def test_transform_with_model_data_makes_its_model_with_our_image(aws, capsys):
    region = "ap-southeast-2"
    (cpu,) = pushed(region, f"cpu-{VERSION}-0000000000c1")
    boto3.client("s3", region_name=region).create_bucket(
        Bucket="batch-images", CreateBucketConfiguration={"LocationConstraint": region})
    assert main(["transform", "--model-data", DATA, "--role", ROLE, "--input", "s3://batch-images/in/",
                 "--output", "s3://batch-images/out/", "--instance-type", "ml.c5.2xlarge", "--poll", "0.05",
                 "--region", region]) == 0
    err = capsys.readouterr().err
    sm = boto3.client("sagemaker", region_name=region)
    (job,) = sm.list_transform_jobs()["TransformJobSummaries"]
    name = job["TransformJobName"]
    assert name.startswith("transform-") and f"model {name}: {cpu}" in err
    assert sm.describe_transform_job(TransformJobName=name)["ModelName"] == name
    model = sm.describe_model(ModelName=name)
    assert (model["PrimaryContainer"]["Image"], model["PrimaryContainer"]["ModelDataUrl"]) == (cpu, DATA)
    assert model["ExecutionRoleArn"] == ROLE

    # on a GPU instance with nothing pushed for it: the same error as deploy create, and nothing made
    assert main(["transform", "--model-data", DATA, "--role", ROLE, "--input", "s3://batch-images/in/",
                 "--output", "s3://batch-images/out/", "--instance-type", "ml.g4dn.xlarge", "--job-name", "t-gpu",
                 "--region", region]) == 1
    assert "run `smvision image push gpu" in capsys.readouterr().err
    assert "t-gpu" not in models(region)

    assert main(["transform", "--model-data", DATA, "--input", "s3://batch-images/in/",
                 "--output", "s3://batch-images/out/", "--region", region]) == 2
    assert "--model-data needs --role" in capsys.readouterr().err
    assert main(["transform", "--model-name", "m", "--image", "pytorch-2.6-dlc", "--input", "s3://batch-images/in/",
                 "--output", "s3://batch-images/out/", "--region", region]) == 2
    assert "not with --model-name" in capsys.readouterr().err
