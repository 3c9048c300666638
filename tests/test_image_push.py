"""`smvision image build|push {cpu|gpu}` against moto's server (ECR, S3, IAM, CodeBuild, Logs).

The container engine is a recording stub: a script named docker (or finch, podman) on
PATH, written by each test, that appends its argv (and what it read on stdin) to a file.
CodeBuild builds run nothing in moto: moto_sagemaker.py ends each as the test's
s3://moto-codebuild/next-build.json says (SUCCEEDED when there is none) and writes its log
lines to CloudWatch Logs. What the commands made is read back with describe_* / get_* calls.
"""

from __future__ import annotations

import importlib.metadata
import io
import json
import os
import re
import sys
import zipfile
from pathlib import Path

import boto3
import pytest

import moto_sagemaker
from smvision.cli import main

REPO = Path(__file__).resolve().parent.parent
ACCOUNT = "123456789012"
ROLE = "arn:aws:iam::123456789012:role/SageMakerRole"
DATA = "s3://smvision-models/d0/dev/20261126T120000Z/model.tar.gz"
VERSION = importlib.metadata.version("smvision")
STUB = f"""#!{sys.executable}
import json, os, sys
stdin = sys.stdin.read() if "--password-stdin" in sys.argv else None
with open(os.environ["ENGINE_STUB_LOG"], "a") as log:
    log.write(json.dumps({{"engine": os.path.basename(sys.argv[0]), "argv": sys.argv[1:], "stdin": stdin}}) + "\\n")
if sys.argv[1] == os.environ.get("ENGINE_STUB_FAIL"):
    print("#9 ERROR: process did not complete successfully: exit code: 1", file=sys.stderr)
    sys.exit(1)
print(os.path.basename(sys.argv[0]), sys.argv[1], "done")
"""


@pytest.fixture(scope="module")
def aws(tmp_path_factory):
    with moto_sagemaker.running(tmp_path_factory.mktemp("moto-images") / "moto.log") as url:
        yield url


class Engines:
    """Stub engines on a PATH of their own; .calls() is what they were run with, in order."""

    def __init__(self, folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.bin = folder / "bin"
        self.bin.mkdir()
        self.log = folder / "engine-calls.jsonl"
        monkeypatch.setenv("ENGINE_STUB_LOG", str(self.log))
        monkeypatch.setenv("PATH", str(self.bin))  # nothing else: no real engine can answer

    def add(self, *names: str) -> "Engines":
        for name in names:
            path = self.bin / name
            path.write_text(STUB)
            path.chmod(0o755)
        return self

    def calls(self) -> list[dict]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]


@pytest.fixture
def engines(tmp_path, monkeypatch) -> Engines:
    return Engines(tmp_path, monkeypatch)


def recorded(config_dir: Path) -> dict:
    return json.loads((config_dir / "images.json").read_text())["images"]


def tag_of(uri: str, processor: str = "cpu") -> str:
    repository, _, tag = uri.rpartition(":")
    assert re.fullmatch(rf"{processor}-{re.escape(VERSION)}-[0-9a-f]{{12}}", tag), uri
    return tag


# --- image build: the local engine -------------------------------------------------------


def test_build_runs_the_first_engine_on_path_for_linux_amd64(engines, capsys):
    engines.add("finch", "podman")  # no docker: finch comes next
    assert main(["image", "build", "cpu"]) == 0
    local = capsys.readouterr().out.strip()
    tag = tag_of(local)
    (call,) = engines.calls()
    assert call["engine"] == "finch"
    digest = call["argv"][12].removeprefix("org.opencontainers.image.revision=")
    assert re.fullmatch("[0-9a-f]{64}", digest) and tag.endswith(digest[:12]), "the tag carries the inputs' digest"
    assert call["argv"] == ["build", "--platform", "linux/amd64", "-f", str(REPO / "Dockerfile.cpu"),
                            "-t", f"smvision:{tag}", "-t", "smvision:cpu",
                            "--label", f"org.opencontainers.image.version={VERSION}",
                            "--label", f"org.opencontainers.image.revision={digest}", str(REPO)]


def test_the_tag_follows_what_goes_into_the_image(tmp_path, engines, capsys):
    """Same inputs, same tag; a change to a file the Dockerfile copies, a new one; a file it
    does not copy (tests/, docs/) changes nothing."""
    import shutil

    engines.add("docker")
    checkout = tmp_path / "checkout"
    shutil.copytree(REPO, checkout, ignore=shutil.ignore_patterns(".venv", ".git", "*.egg-info", "__pycache__",
                                                                   ".pytest_cache", "demo-output"))

    def tag() -> str:
        assert main(["image", "build", "gpu", "--context", str(checkout)]) == 0
        return capsys.readouterr().out.strip()

    first = tag()
    assert tag() == first
    (checkout / "docs" / "aws-toolkit.md").write_text("changed\n")
    (checkout / "tests" / "new_test.py").write_text("# not in the image\n")
    assert tag() == first
    (checkout / "container" / "serve.py").write_text((checkout / "container" / "serve.py").read_text() + "\n# x\n")
    assert tag() != first
    assert tag_of(first, "gpu")


def test_no_engine_says_to_build_remotely(engines, aws, capsys):
    assert main(["image", "build", "cpu"]) == 1
    assert "no container engine on PATH (docker, finch or podman)" in capsys.readouterr().err
    assert main(["image", "push", "cpu", "--region", "ap-south-1"]) == 1
    assert "smvision image push cpu|gpu --remote" in capsys.readouterr().err
    # said before any AWS call: no repository was made
    assert boto3.client("ecr", region_name="ap-south-1").describe_repositories()["repositories"] == []


# --- image push: local engine -> ECR -----------------------------------------------------


def test_push_creates_the_repository_logs_in_tags_pushes_and_records(aws, engines, smvision_config_dir, capsys):
    engines.add("docker")
    assert main(["image", "push", "cpu", "--region", "eu-west-3", "--keep", "3"]) == 0
    captured = capsys.readouterr()
    uri = captured.out.strip()
    assert uri.startswith(f"{ACCOUNT}.dkr.ecr.eu-west-3.amazonaws.com/smvision:")
    tag = tag_of(uri)

    ecr = boto3.client("ecr", region_name="eu-west-3")
    (repository,) = ecr.describe_repositories(repositoryNames=["smvision"])["repositories"]
    assert repository["imageScanningConfiguration"] == {"scanOnPush": True}
    rules = json.loads(ecr.get_lifecycle_policy(repositoryName="smvision")["lifecyclePolicyText"])["rules"]
    kept = {tuple(r["selection"].get("tagPrefixList", ())): r["selection"]["countNumber"] for r in rules
            if r["selection"]["countType"] == "imageCountMoreThan"}
    assert kept == {("cpu-",): 3, ("gpu-",): 3}

    login, build, retag, push = engines.calls()
    registry = f"{ACCOUNT}.dkr.ecr.eu-west-3.amazonaws.com"
    assert login["argv"] == ["login", "--username", "AWS", "--password-stdin", registry]
    assert login["stdin"].strip() == f"{ACCOUNT}-auth-token"  # moto's token's password, on stdin only
    assert not any(f"{ACCOUNT}-auth-token" in word for call in engines.calls() for word in call["argv"])
    assert build["argv"][:2] == ["build", "--platform"] and f"smvision:{tag}" in build["argv"]
    assert retag["argv"] == ["tag", f"smvision:{tag}", uri]
    assert push["argv"] == ["push", uri]
    assert "docker push done" in captured.err  # the engine's output goes to stderr

    entry = recorded(smvision_config_dir)[f"{ACCOUNT}/eu-west-3/cpu"]
    assert (entry["uri"], entry["repository"], entry["tag"], entry["version"]) == (uri, "smvision", tag, VERSION)


def test_push_of_a_tag_already_in_ecr_builds_nothing(aws, engines, smvision_config_dir, capsys):
    engines.add("docker")
    assert main(["image", "build", "gpu"]) == 0
    tag = capsys.readouterr().out.strip().split(":", 1)[1]
    ecr = boto3.client("ecr", region_name="eu-central-1")
    ecr.create_repository(repositoryName="team-images")
    ecr.put_image(repositoryName="team-images", imageTag=tag, imageManifest=json.dumps(_manifest("1")))
    calls_before = len(engines.calls())

    assert main(["image", "push", "gpu", "--region", "eu-central-1", "--repository", "team-images"]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == f"{ACCOUNT}.dkr.ecr.eu-central-1.amazonaws.com/team-images:{tag}"
    assert "is in ECR already" in captured.err
    assert len(engines.calls()) == calls_before
    assert recorded(smvision_config_dir)[f"{ACCOUNT}/eu-central-1/gpu"]["tag"] == tag
    # an existing repository keeps its settings, and gets the lifecycle policy it lacked
    assert json.loads(ecr.get_lifecycle_policy(repositoryName="team-images")["lifecyclePolicyText"])["rules"]

    assert main(["image", "push", "gpu", "--region", "eu-central-1", "--repository", "team-images", "--rebuild"]) == 0
    assert [c["argv"][0] for c in engines.calls()[calls_before:]] == ["login", "build", "tag", "push"]


def test_a_failed_engine_step_is_named_and_nothing_is_recorded(aws, engines, smvision_config_dir, monkeypatch, capsys):
    engines.add("podman")
    monkeypatch.setenv("ENGINE_STUB_FAIL", "build")
    assert main(["image", "push", "cpu", "--region", "eu-west-2"]) == 1
    err = capsys.readouterr().err
    assert "smvision: error: `podman build` failed (exit 1):" in err
    assert "#9 ERROR: process did not complete successfully" in err
    assert [c["argv"][0] for c in engines.calls()] == ["login", "build"]
    assert not (smvision_config_dir / "images.json").exists()


# --- image push --remote: CodeBuild -------------------------------------------------------


def _manifest(seed: str) -> dict:
    return {"schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "size": 1,
                       "digest": "sha256:" + seed * 64}, "layers": []}


def _builds(region: str) -> list[dict]:
    cb = boto3.client("codebuild", region_name=region)
    ids = cb.list_builds_for_project(projectName="smvision-image-build")["ids"]
    return cb.batch_get_builds(ids=ids)["builds"] if ids else []


def test_remote_push_then_deploy_create_uses_that_image(aws, engines, smvision_config_dir, capsys):
    """From a checkout on a machine without an engine: `image push cpu --remote` makes the ECR
    repository, the source bucket, the service role and the CodeBuild project, runs the build
    and prints the URI; `deploy create` without --image deploys it."""
    region = "us-east-1"
    assert main(["image", "push", "cpu", "--remote", "--region", region, "--poll", "0.05"]) == 0
    captured = capsys.readouterr()
    uri = captured.out.strip()
    assert uri.startswith(f"{ACCOUNT}.dkr.ecr.{region}.amazonaws.com/smvision:")
    tag = tag_of(uri)
    assert engines.calls() == []

    (repository,) = boto3.client("ecr", region_name=region).describe_repositories(repositoryNames=["smvision"])[
        "repositories"]
    (project,) = boto3.client("codebuild", region_name=region).batch_get_projects(names=["smvision-image-build"])[
        "projects"]
    role = boto3.client("iam").get_role(RoleName=f"smvision-image-build-{region}")["Role"]
    assert project["serviceRole"] == role["Arn"]
    assert role["AssumeRolePolicyDocument"]["Statement"][0]["Principal"] == {"Service": "codebuild.amazonaws.com"}
    policy = boto3.client("iam").get_role_policy(RoleName=role["RoleName"], PolicyName="smvision-image-build")
    push = next(s for s in policy["PolicyDocument"]["Statement"] if s["Sid"] == "EcrPush")
    assert push["Resource"] == repository["repositoryArn"] and "ecr:PutImage" in push["Action"]

    (build,) = _builds(region)
    assert build["buildStatus"] == "SUCCEEDED"
    environment = build["environment"]
    assert environment["privilegedMode"] is True and environment["computeType"] == "BUILD_GENERAL1_MEDIUM"
    variables = {v["name"]: v["value"] for v in environment["environmentVariables"]}
    assert variables["IMAGE_URI"] == uri and variables["DOCKERFILE"] == "Dockerfile.cpu"
    assert variables["PLATFORM"] == "linux/amd64"
    assert "docker push" in build["source"]["buildspec"]
    bucket, key = build["source"]["location"].split("/", 1)
    assert (bucket, key) == (f"smvision-build-{ACCOUNT}-{region}", f"smvision-build/{tag}.zip")
    source = zipfile.ZipFile(io.BytesIO(boto3.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read()))
    names = set(source.namelist())
    assert {"Dockerfile.cpu", "requirements.txt", "setup.cfg", "code/smvision/kinds/__init__.py",
            "container/serve.py"} <= names
    assert not any(n.startswith(("tests/", "devtools/", ".git/")) for n in names), sorted(names)
    assert "moto: a build that runs nothing" in captured.err  # the build's log, streamed
    assert "CodeBuild project smvision-image-build: created" in captured.err
    assert recorded(smvision_config_dir)[f"{ACCOUNT}/{region}/cpu"]["uri"] == uri

    assert main(["deploy", "create", "--name", "d0-ours", "--role", ROLE, "--model-data", DATA,
                 "--instance-type", "ml.c5.xlarge", "--poll", "0.05", "--region", region]) == 0
    assert f"image {uri}: pushed by `smvision image push cpu`" in capsys.readouterr().err
    sm = boto3.client("sagemaker", region_name=region)
    config = sm.describe_endpoint_config(
        EndpointConfigName=sm.describe_endpoint(EndpointName="d0-ours")["EndpointConfigName"])
    model = sm.describe_model(ModelName=config["ProductionVariants"][0]["ModelName"])
    assert model["PrimaryContainer"]["Image"] == uri

    # a second push reuses the project (and, with --rebuild, builds again)
    assert main(["image", "push", "cpu", "--remote", "--region", region, "--poll", "0.05", "--rebuild"]) == 0
    assert "CodeBuild project smvision-image-build: exists, reused" in capsys.readouterr().err
    assert len(_builds(region)) == 2


@pytest.fixture
def build_script(aws):
    """build_script(outcome): how the next CodeBuild builds end (moto_sagemaker.py)."""
    s3 = boto3.client("s3")
    bucket, key = moto_sagemaker.BUILD_SCRIPT
    s3.create_bucket(Bucket=bucket)
    yield lambda outcome: s3.put_object(Bucket=bucket, Key=key, Body=json.dumps(outcome).encode())
    s3.delete_object(Bucket=bucket, Key=key)


def test_a_failed_remote_build_names_its_phase(aws, engines, build_script, smvision_config_dir, capsys):
    build_script({"status": "FAILED", "phase": "BUILD",
                  "message": "Error while executing command: docker build ... Reason: exit status 1",
                  "log": ["#8 [builder 4/9] RUN pip install --no-cache-dir -r requirements.txt",
                          "ERROR: No matching distribution found for torch==2.14.1"]})
    assert main(["image", "push", "gpu", "--remote", "--region", "ca-central-1", "--poll", "0.05"]) == 1
    err = capsys.readouterr().err
    assert "ERROR: No matching distribution found for torch==2.14.1" in err  # streamed from CloudWatch Logs
    line = err.strip().splitlines()[-1]
    assert line.startswith("smvision: error: CodeBuild build smvision-image-build:")
    assert "FAILED in phase BUILD (docker build and docker push" in line
    assert "COMMAND_EXECUTION_ERROR: Error while executing command: docker build" in line
    (build,) = _builds("ca-central-1")
    assert build["environment"]["computeType"] == "BUILD_GENERAL1_LARGE"
    assert not (smvision_config_dir / "images.json").exists()


def test_a_remote_build_that_does_not_end_is_waited_for_a_bounded_time(aws, engines, build_script, capsys):
    build_script({"status": "IN_PROGRESS", "phase": "BUILD"})
    assert main(["image", "push", "cpu", "--remote", "--region", "sa-east-1", "--poll", "0.05",
                 "--timeout", "0.3"]) == 1
    err = capsys.readouterr().err
    (build,) = _builds("sa-east-1")
    assert (f"smvision: error: CodeBuild build {build['id']} still IN_PROGRESS in phase BUILD after 0.3 s; "
            "it goes on in CodeBuild") in err
    assert f"aws codebuild stop-build --id {build['id']}" in err


def test_remote_with_an_existing_role_and_bucket(aws, engines, capsys):
    iam = boto3.client("iam")
    trust = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole",
                                                     "Principal": {"Service": "codebuild.amazonaws.com"}}]}
    role = iam.create_role(RoleName="team-build-role", AssumeRolePolicyDocument=json.dumps(trust))["Role"]["Arn"]
    boto3.client("s3", region_name="us-west-2").create_bucket(
        Bucket="team-build-sources", CreateBucketConfiguration={"LocationConstraint": "us-west-2"})
    assert main(["image", "push", "cpu", "--remote", "--region", "us-west-2", "--poll", "0.05",
                 "--service-role", role, "--bucket", "team-build-sources"]) == 0
    (build,) = _builds("us-west-2")
    assert build["serviceRole"] == role and build["source"]["location"].startswith("team-build-sources/")
    with pytest.raises(iam.exceptions.NoSuchEntityException):
        iam.get_role(RoleName="smvision-image-build-us-west-2")
    capsys.readouterr()
    assert main(["image", "push", "cpu", "--bucket", "b"]) == 2
    assert "--bucket and --service-role are for --remote builds" in capsys.readouterr().err


def test_the_config_folder_is_the_users_unless_told(monkeypatch, tmp_path):
    from smvision.deploy import image_record

    monkeypatch.delenv("SMVISION_CONFIG_DIR")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert image_record.record_path() == tmp_path / "xdg" / "smvision" / "images.json"
    monkeypatch.delenv("XDG_CONFIG_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert image_record.record_path() == tmp_path / "home" / ".config" / "smvision" / "images.json"
    assert os.environ.get("SMVISION_CONFIG_DIR") is None
