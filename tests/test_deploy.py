"""`smvision deploy create/delete/list` and `invoke --async` against moto's server.

Every control-plane call is checked the way a user would check it: through describe_*.
moto_sagemaker.py adds the two things moto 5.2.5 lacks (UpdateEndpoint, a failing
container); endpoints are InService at once there. Our cpu and gpu images are in moto's
ECR as `smvision image push` leaves them, so `deploy create` without --image finds them
(tests/test_serving_image.py and tests/test_image_push.py test that choice itself).
"""

from __future__ import annotations

import importlib.metadata
import json

import boto3
import pytest
import requests

import moto_sagemaker
from smvision.cli import main

ROLE = "arn:aws:iam::123456789012:role/SageMakerRole"
DATA = "s3://smvision-models/d0/dev/20261126T120000Z/model.tar.gz"
VERSION = importlib.metadata.version("smvision")
CPU_IMAGE = f"123456789012.dkr.ecr.us-east-1.amazonaws.com/smvision:cpu-{VERSION}-0123456789ab"
GPU_IMAGE = f"123456789012.dkr.ecr.us-east-1.amazonaws.com/smvision:gpu-{VERSION}-0123456789ab"
TARGET = "endpoint/{}/variant/AllTraffic"
DIMENSION = "sagemaker:variant:DesiredInstanceCount"


@pytest.fixture(scope="module")
def aws(tmp_path_factory):
    """moto (with UpdateEndpoint) for SageMaker, autoscaling, the runtime, S3 and ECR of this module,
    our cpu and gpu images in its ECR."""
    with moto_sagemaker.running(tmp_path_factory.mktemp("moto-sm") / "moto.log") as url:
        ecr = boto3.client("ecr")
        ecr.create_repository(repositoryName="smvision")
        for image in (CPU_IMAGE, GPU_IMAGE):
            manifest = {"schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                        "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "size": 1,
                                   "digest": "sha256:" + ("c" if "cpu-" in image else "9") * 64}, "layers": []}
            ecr.put_image(repositoryName="smvision", imageTag=image.rsplit(":", 1)[1],
                          imageManifest=json.dumps(manifest))
        yield url


@pytest.fixture
def sm(aws):
    return boto3.client("sagemaker")


@pytest.fixture
def scaling(aws):
    return boto3.client("application-autoscaling")


def deploy(*args: str) -> int:
    return main(["deploy", "create", "--role", ROLE, "--model-data", DATA, "--poll", "0.05", *args])


def model_of(sm, endpoint: str) -> tuple[dict, dict]:
    description = sm.describe_endpoint(EndpointName=endpoint)
    config = sm.describe_endpoint_config(EndpointConfigName=description["EndpointConfigName"])
    model = sm.describe_model(ModelName=config["ProductionVariants"][0]["ModelName"])
    return config, model


def owned(sm, endpoint: str) -> tuple[list[str], list[str]]:
    # (moto ignores NameContains for models: filter here)
    configs = [c["EndpointConfigName"] for c in sm.list_endpoint_configs()["EndpointConfigs"]]
    models = [m["ModelName"] for m in sm.list_models()["Models"]]
    mine = lambda name: name.startswith(endpoint + "-")  # noqa: E731
    return sorted(filter(mine, configs)), sorted(filter(mine, models))


def test_create_real_time_endpoint_with_autoscaling(sm, scaling, capsys):
    assert deploy("--name", "d0-rt", "--instance-type", "ml.c5.xlarge", "--instance-count", "2",
                  "--env", "EFFICIENTDET_COMPOUND_COEF=0", "DEFAULT_PRED_THRESHOLD=0.3",
                  "--autoscale", "2:5", "--target-invocations", "250", "--startup-timeout", "900") == 0
    assert capsys.readouterr().out.startswith("d0-rt InService d0-rt-")

    description = sm.describe_endpoint(EndpointName="d0-rt")
    assert description["EndpointStatus"] == "InService"
    config, model = model_of(sm, "d0-rt")
    assert model["PrimaryContainer"]["Image"] == CPU_IMAGE
    assert model["PrimaryContainer"]["ModelDataUrl"] == DATA
    assert model["PrimaryContainer"]["Environment"] == {"EFFICIENTDET_COMPOUND_COEF": "0", "DEFAULT_PRED_THRESHOLD": "0.3"}
    assert model["ExecutionRoleArn"] == ROLE
    (variant,) = config["ProductionVariants"]
    assert variant["VariantName"] == "AllTraffic"
    assert (variant["InstanceType"], variant["InitialInstanceCount"]) == ("ml.c5.xlarge", 2)
    assert variant["ContainerStartupHealthCheckTimeoutInSeconds"] == 900
    assert "AsyncInferenceConfig" not in config

    (target,) = scaling.describe_scalable_targets(ServiceNamespace="sagemaker", ResourceIds=[TARGET.format("d0-rt")])["ScalableTargets"]
    assert (target["MinCapacity"], target["MaxCapacity"], target["ScalableDimension"]) == (2, 5, DIMENSION)
    (policy,) = scaling.describe_scaling_policies(ServiceNamespace="sagemaker", ResourceId=TARGET.format("d0-rt"))["ScalingPolicies"]
    tracking = policy["TargetTrackingScalingPolicyConfiguration"]
    assert policy["PolicyType"] == "TargetTrackingScaling"
    assert tracking["TargetValue"] == 250.0
    assert tracking["PredefinedMetricSpecification"]["PredefinedMetricType"] == "SageMakerVariantInvocationsPerInstance"


def test_update_moves_the_endpoint_to_a_new_config_and_removes_the_old_one(sm, scaling, capsys):
    assert deploy("--name", "d0-up", "--instance-type", "ml.c5.xlarge", "--autoscale", "1:2") == 0
    first_config, first_model = model_of(sm, "d0-up")

    assert deploy("--name", "d0-up", "--instance-type", "ml.g4dn.xlarge", "--instance-count", "3",
                  "--env", "USE_FLOAT16=true", "--autoscale", "3:6") == 0
    config, model = model_of(sm, "d0-up")
    assert config["EndpointConfigName"] != first_config["EndpointConfigName"]
    assert model["PrimaryContainer"]["Image"] == GPU_IMAGE
    assert model["PrimaryContainer"]["Environment"] == {"USE_FLOAT16": "true"}
    assert (config["ProductionVariants"][0]["InstanceType"], config["ProductionVariants"][0]["InitialInstanceCount"]) == ("ml.g4dn.xlarge", 3)
    # the previous config and model are gone; one of each remains
    assert owned(sm, "d0-up") == ([config["EndpointConfigName"]], [model["ModelName"]])
    (target,) = scaling.describe_scalable_targets(ServiceNamespace="sagemaker", ResourceIds=[TARGET.format("d0-up")])["ScalableTargets"]
    assert (target["MinCapacity"], target["MaxCapacity"]) == (3, 6)
    assert "updating from " + first_config["EndpointConfigName"] in capsys.readouterr().err


def test_own_image_async_and_serverless_configs(sm):
    image = "123456789012.dkr.ecr.us-east-1.amazonaws.com/smvision:cpu"
    assert deploy("--name", "d0-async", "--instance-type", "ml.c5.xlarge", "--image", image,
                  "--async-output", "s3://smvision-async/out", "--async-failure", "s3://smvision-async/failed",
                  "--async-max-concurrent", "4") == 0
    config, model = model_of(sm, "d0-async")
    assert model["PrimaryContainer"]["Image"] == image
    assert config["AsyncInferenceConfig"] == {
        "OutputConfig": {"S3OutputPath": "s3://smvision-async/out", "S3FailurePath": "s3://smvision-async/failed"},
        "ClientConfig": {"MaxConcurrentInvocationsPerInstance": 4},
    }

    assert deploy("--name", "d0-sls", "--serverless", "3072", "--serverless-max-concurrency", "8") == 0
    config, model = model_of(sm, "d0-sls")
    (variant,) = config["ProductionVariants"]
    assert variant["ServerlessConfig"] == {"MemorySizeInMB": 3072, "MaxConcurrency": 8}
    assert "InstanceType" not in variant
    assert model["PrimaryContainer"]["Image"] == CPU_IMAGE


def test_failed_endpoint_shows_its_failure_reason(sm, capsys):
    reason = "The primary container for production variant AllTraffic did not pass the ping health check."
    code = deploy("--name", "d0-broken", "--instance-type", "ml.c5.xlarge", "--env", f"MOTO_FAILURE_REASON={reason}")
    assert code == 1
    assert f"endpoint d0-broken is Failed: {reason}" in capsys.readouterr().err
    # a failed endpoint cannot be updated: the message says to delete it first
    assert deploy("--name", "d0-broken", "--instance-type", "ml.c5.xlarge") == 1
    assert "smvision deploy delete --name d0-broken" in capsys.readouterr().err


def test_failed_update_is_rolled_back_and_reported(sm, capsys):
    assert deploy("--name", "d0-rollback", "--instance-type", "ml.c5.xlarge") == 0
    before = sm.describe_endpoint(EndpointName="d0-rollback")["EndpointConfigName"]
    code = deploy("--name", "d0-rollback", "--instance-type", "ml.c5.xlarge", "--env", "MOTO_FAILURE_REASON=out of memory")
    assert code == 1
    assert f"rolled back, it still runs {before}: out of memory" in capsys.readouterr().err
    assert sm.describe_endpoint(EndpointName="d0-rollback")["EndpointConfigName"] == before


def test_delete_leaves_nothing_and_is_quiet_when_gone(sm, scaling, capsys):
    assert deploy("--name", "d0-del", "--instance-type", "ml.c5.xlarge", "--autoscale", "1:3") == 0
    assert deploy("--name", "d0-del", "--instance-type", "ml.c5.xlarge", "--instance-count", "2", "--autoscale", "2:3") == 0
    capsys.readouterr()

    assert main(["deploy", "delete", "--name", "d0-del"]) == 0
    out = capsys.readouterr().out
    assert "deleted endpoint d0-del" in out and "deleted endpoint config d0-del-" in out and "deleted model d0-del-" in out
    assert "deleted scalable target endpoint/d0-del/variant/AllTraffic" in out
    with pytest.raises(sm.exceptions.ClientError, match="Could not find endpoint"):
        sm.describe_endpoint(EndpointName="d0-del")
    assert owned(sm, "d0-del") == ([], [])
    assert scaling.describe_scalable_targets(ServiceNamespace="sagemaker", ResourceIds=[TARGET.format("d0-del")])["ScalableTargets"] == []
    assert scaling.describe_scaling_policies(ServiceNamespace="sagemaker", ResourceId=TARGET.format("d0-del"))["ScalingPolicies"] == []

    assert main(["deploy", "delete", "--name", "d0-del"]) == 0
    assert capsys.readouterr() == ("", "")


def test_list_shows_endpoints(capsys):
    assert deploy("--name", "d0-listed", "--instance-type", "ml.c5.xlarge", "--instance-count", "2") == 0
    capsys.readouterr()
    assert main(["deploy", "list"]) == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("d0-listed "))
    assert "InService" in line and "2 x ml.c5.xlarge" in line and "d0-listed-" in line


@pytest.mark.parametrize(
    "args, message",
    [
        (["--name", "x", "--serverless", "2048", "--autoscale", "1:2"], "cannot be combined"),
        (["--name", "x", "--serverless", "1000"], "one of (1024"),
        (["--name", "x"], "--instance-type is required"),
        (["--name", "x", "--instance-type", "ml.c5.xlarge", "--autoscale", "3:1"], "1 <= MIN <= MAX"),
        (["--name", "bad_name", "--instance-type", "ml.c5.xlarge"], "--name must be"),
        (["--name", "x", "--instance-type", "ml.c5.xlarge", "--env", "NOEQUALS"], "KEY=VALUE"),
    ],
)
def test_bad_options_are_refused_before_any_call(sm, args, message, capsys):
    assert deploy(*args) == 2
    assert message in capsys.readouterr().err
    assert owned(sm, "x") == ([], [])


def test_async_invoke_uploads_the_input_and_waits_for_the_output(aws, sm, tmp_path, capsys):
    # moto answers InvokeEndpointAsync by writing a queued result to S3 itself; a real
    # endpoint writes it when the container has answered.
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="smvision-async")
    assert deploy("--name", "d0-async-call", "--instance-type", "ml.c5.xlarge", "--async-output", "s3://smvision-async/out") == 0
    detections = [{"source": "s3://photos/a.jpg", "detections": []}]
    requests.post(aws + "/moto-api/static/sagemaker/async-endpoint-results",
                  json={"results": [{"data": json.dumps(detections)}, {"is_failure": True, "data": "image too large"}]})
    capsys.readouterr()

    assert main(["invoke", "--name", "d0-async-call", "--async", "--s3", "photos/a.jpg", "--poll", "0.05"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out) == detections
    assert "async result s3://" in captured.err
    uploaded = s3.list_objects_v2(Bucket="smvision-async", Prefix="out-input/")["Contents"]
    assert [s3.get_object(Bucket="smvision-async", Key=o["Key"])["Body"].read() for o in uploaded] == [b"photos/a.jpg\n"]

    assert main(["invoke", "--name", "d0-async-call", "--async", "--s3", "photos/b.jpg", "--poll", "0.05"]) == 1
    err = capsys.readouterr().err
    assert "async inference failed" in err and "image too large" in err


def test_async_invoke_of_a_real_time_endpoint_is_refused(capsys):
    assert deploy("--name", "d0-sync-only", "--instance-type", "ml.c5.xlarge") == 0
    capsys.readouterr()
    assert main(["invoke", "--name", "d0-sync-only", "--async", "--s3", "photos/a.jpg"]) == 1
    assert "not an async endpoint" in capsys.readouterr().err


def test_image_lookup_by_region_and_instance_type():
    from smvision.deploy.images import pytorch_inference_image

    assert pytorch_inference_image("eu-west-1", "ml.p3.2xlarge") == \
        "763104351884.dkr.ecr.eu-west-1.amazonaws.com/pytorch-inference:2.6.0-gpu-py312"
    assert pytorch_inference_image("cn-north-1", "ml.c5.xlarge") == \
        "727897471807.dkr.ecr.cn-north-1.amazonaws.com.cn/pytorch-inference:2.6.0-cpu-py312"
    assert pytorch_inference_image("af-south-1", None).startswith("626614931356.dkr.ecr.af-south-1.")  # serverless
    with pytest.raises(ValueError, match="Neuron"):
        pytorch_inference_image("us-east-1", "ml.inf2.xlarge")
    with pytest.raises(ValueError, match="no AWS PyTorch 2.6 inference image"):
        pytorch_inference_image("xx-nowhere-1", "ml.c5.xlarge")
