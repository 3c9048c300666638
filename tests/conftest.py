"""Session fixtures: a moto S3 server with real photos, a D0 archive, a running server."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import pytest

from smvision.deploy.server_process import smvision_serve
from support import LocalS3, skimage_photo

BUCKET = "smvision-photos"
PHOTOS = ("astronaut.png", "coffee.png", "rocket.jpg", "chelsea.png")


@pytest.fixture(autouse=True)
def smvision_config_dir(tmp_path_factory, monkeypatch, request) -> Path:
    """A config folder of the test's own, never the user's (`image push` records images there);
    made only when something is written there."""
    test = hashlib.sha1(request.node.nodeid.encode()).hexdigest()[:16]
    folder = tmp_path_factory.getbasetemp() / "smvision-config" / test
    monkeypatch.setenv("SMVISION_CONFIG_DIR", str(folder))
    return folder


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory) -> str:
    """A moto S3 server on 127.0.0.1; boto3 in this process and children points at it."""
    with LocalS3(tmp_path_factory.mktemp("moto") / "moto.log") as s3:
        yield s3.url


@pytest.fixture(scope="session")
def photos(s3_endpoint) -> dict[str, bytes]:
    """BUCKET holds real photos, plus broken files under broken/. Returns key -> bytes."""
    import boto3
    from PIL import Image

    s3 = boto3.client("s3")
    s3.create_bucket(Bucket=BUCKET)
    objects = {name: skimage_photo(name).read_bytes() for name in PHOTOS}
    rocket = objects["rocket.jpg"]
    objects["broken/truncated.jpg"] = rocket[: len(rocket) // 2]
    objects["broken/not-an-image.jpg"] = b"this is a text file, not a JPEG\n" * 10
    rotated = io.BytesIO()
    image = Image.open(io.BytesIO(objects["coffee.png"])).convert("RGB")
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 CW to display
    image.save(rotated, format="JPEG", quality=90, exif=exif)
    objects["exif/coffee-rotated.jpg"] = rotated.getvalue()
    for key, data in objects.items():
        s3.put_object(Bucket=BUCKET, Key=key, Body=data)
    return objects


@pytest.fixture(scope="session")
def d0_archive(tmp_path_factory) -> Path:
    """A randomly initialised EfficientDet D0 model.tar.gz."""
    from smvision.archive.efficientdet import build_efficientdet_archive

    return build_efficientdet_archive(tmp_path_factory.mktemp("d0") / "model.tar.gz", compound_coef=0)


@pytest.fixture(scope="session")
def d0_model_dir(d0_archive, tmp_path_factory) -> Path:
    """The D0 archive extracted, read-only as SageMaker mounts it."""
    from smvision.archive.build import extract_archive

    model_dir = extract_archive(d0_archive, tmp_path_factory.mktemp("d0-model") / "model")
    for path in sorted(model_dir.rglob("*"), reverse=True):
        path.chmod(0o555 if path.is_dir() else 0o444)
    model_dir.chmod(0o555)
    return model_dir


@pytest.fixture(scope="session")
def d0_server(d0_model_dir, photos, tmp_path_factory):
    """`smvision serve` on the D0 archive, ready, reading photos from moto."""
    with smvision_serve(d0_model_dir, env={"SAGEMAKER_MAX_PAYLOAD_IN_MB": "6"},
                        log_path=tmp_path_factory.mktemp("serve") / "serve.log", ready_timeout_s=120) as server:
        yield server


@pytest.fixture(scope="session")
def sam_model_dir(tmp_path_factory):
    """sam_model_dir(kind) -> the extracted, read-only archive of the CI-sized SAM
    (vit_tiny_test, random weights, seed 0) for kind sam-encode | sam-decode | sam;
    each built once per session."""
    from smvision.archive.build import extract_archive
    from smvision.archive.sam import build_sam_archive

    built: dict[str, Path] = {}

    def get(kind: str) -> Path:
        if kind not in built:
            root = tmp_path_factory.mktemp(kind)
            archive = build_sam_archive(root / "model.tar.gz", kind, "vit_tiny_test")
            model_dir = extract_archive(archive, root / "model")
            for path in sorted(model_dir.rglob("*"), reverse=True):
                path.chmod(0o555 if path.is_dir() else 0o444)
            built[kind] = model_dir
        return built[kind]

    return get


@pytest.fixture(scope="session")
def tiny_sam():
    """The CI-sized SAM the sam archives hold (vit_tiny_test, seed 0), as a torch Sam."""
    import torch

    from smvision.models.sam.build import build_sam, sam_config

    torch.manual_seed(0)
    return build_sam(sam_config("vit_tiny_test"))
