"""`smvision transform --model-name N`: a SageMaker batch transform job, against moto.

moto completes a job at once and writes nothing, so these tests check the request
through DescribeTransformJob, the wait, and the listing of outputs (written here as a
real job would write them).
"""

from __future__ import annotations

import boto3
import pytest

import moto_sagemaker
from smvision.cli import main
from smvision.deploy.local_transform import TransformOptions
from smvision.deploy.transform import JobSpec, create_job

ROLE = "arn:aws:iam::123456789012:role/SageMakerRole"


@pytest.fixture(scope="module")
def sm(tmp_path_factory):
    with moto_sagemaker.running(tmp_path_factory.mktemp("moto-tj") / "moto.log"):
        client = boto3.client("sagemaker")
        client.create_model(ModelName="d0-20261126120000000", ExecutionRoleArn=ROLE,
                            PrimaryContainer={"Image": "img", "ModelDataUrl": "s3://m/model.tar.gz"})
        boto3.client("s3").create_bucket(Bucket="batch")
        yield client


def test_job_carries_every_option_and_lists_outputs(sm, capsys):
    s3 = boto3.client("s3")
    for name in ("a.csv.out", "b.csv.out"):  # what the job would have written
        s3.put_object(Bucket="batch", Key=f"out/{name}", Body=b"[]\n")
    s3.put_object(Bucket="batch", Key="out/unrelated.txt", Body=b"x")

    assert main(["transform", "--model-name", "d0-20261126120000000", "--input", "s3://batch/in/",
                 "--output", "s3://batch/out", "--content-type", "text/csv", "--accept", "application/jsonlines",
                 "--split-type", "Line", "--batch-strategy", "MultiRecord", "--max-payload-mb", "4",
                 "--max-concurrent-transforms", "8", "--assemble-with", "Line", "--instance-type", "ml.c5.2xlarge",
                 "--instance-count", "2", "--job-name", "d0-job-1", "--env", "DEFAULT_PRED_THRESHOLD=0.3",
                 "--poll", "0.05"]) == 0
    captured = capsys.readouterr()
    assert captured.out.split() == ["s3://batch/out/a.csv.out", "s3://batch/out/b.csv.out"]
    assert "transform job d0-job-1: Completed" in captured.err

    job = sm.describe_transform_job(TransformJobName="d0-job-1")
    assert job["ModelName"] == "d0-20261126120000000"
    assert (job["BatchStrategy"], job["MaxPayloadInMB"], job["MaxConcurrentTransforms"]) == ("MultiRecord", 4, 8)
    assert job["TransformInput"]["DataSource"]["S3DataSource"] == {"S3DataType": "S3Prefix", "S3Uri": "s3://batch/in/"}
    assert (job["TransformInput"]["ContentType"], job["TransformInput"]["SplitType"]) == ("text/csv", "Line")
    assert job["TransformOutput"] == {"S3OutputPath": "s3://batch/out", "Accept": "application/jsonlines",
                                      "AssembleWith": "Line"}
    assert job["TransformResources"] == {"InstanceType": "ml.c5.2xlarge", "InstanceCount": 2}
    assert job["Environment"] == {"DEFAULT_PRED_THRESHOLD": "0.3"}


def test_job_names_itself_after_the_model_and_leaves_defaults_to_sagemaker(sm):
    name = create_job(sm, JobSpec("d0-20261126120000000", "s3://batch/in/", "s3://batch/o2/", TransformOptions()))
    assert name.startswith("d0-20261126120000000-")
    job = sm.describe_transform_job(TransformJobName=name)
    assert "BatchStrategy" not in job and "MaxPayloadInMB" not in job
    assert job["TransformInput"]["SplitType"] == "None" and job["TransformOutput"]["AssembleWith"] == "None"


def test_sagemaker_limits_are_checked_before_the_job_is_made(sm, capsys):
    assert main(["transform", "--model-name", "m", "--input", "s3://batch/in/", "--output", "s3://batch/o3/",
                 "--max-payload-mb", "20", "--max-concurrent-transforms", "8"]) == 2
    assert "at most 100 MB" in capsys.readouterr().err
    assert main(["transform", "--model-name", "m", "--input", "s3://batch/in/", "--output", "s3://batch/o3/",
                 "--max-payload-mb", "0.5"]) == 2
    assert "whole MB" in capsys.readouterr().err
    assert main(["transform", "--input", "s3://batch/in/", "--output", "s3://batch/o3/"]) == 2
    assert "--model-name is required" in capsys.readouterr().err


def test_a_failed_job_shows_its_failure_reason():
    # moto cannot fail a job: a stand-in for DescribeTransformJob as SageMaker answers it
    from smvision.deploy.transform import TransformJobError, wait_for_job

    answers = iter([{"TransformJobStatus": "InProgress"},
                    {"TransformJobStatus": "Failed", "FailureReason": "ClientError: See job logs for more information"}])

    class Jobs:
        def describe_transform_job(self, TransformJobName):
            return next(answers)

    lines = []
    with pytest.raises(TransformJobError, match="job j Failed: ClientError: See job logs"):
        wait_for_job(Jobs(), "j", poll_s=0, report=lines.append)
    assert [line.split(" (")[0] for line in lines] == ["transform job j: InProgress", "transform job j: Failed"]
