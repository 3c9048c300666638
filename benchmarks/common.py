"""Glue several benchmark scripts share: the photos, their bucket, a D0 archive.

Benchmark-only: whatever tests need too lives in devtools (devtools.local_s3,
toolkit_harness, weights; installed editable by `make install`) or in the package
(smvision.deploy.server_process). Scripts import this as `from common import ...` (a
script's own folder is first on sys.path).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from smvision.archive.build import extract_archive
from devtools.local_s3 import BIN, LocalS3, skimage_photo

BUCKET = "bench"
PHOTOS = ("astronaut.png", "coffee.png", "rocket.jpg", "chelsea.png")


def put_photos(s3: LocalS3, names: tuple[str, ...] = PHOTOS, bucket: str = BUCKET) -> None:
    """Upload scikit-image's photos (by file name) to the local S3."""
    s3.put(bucket, {name: skimage_photo(name).read_bytes() for name in names})


def d0_model_dir(workdir: Path) -> Path:
    """An EfficientDet D0 archive with random weights, built by the CLI as a user would,
    extracted to workdir/model (workdir/model.tar.gz stays beside it)."""
    archive = workdir / "model.tar.gz"
    subprocess.run([str(BIN / "smvision"), "archive", "build", "efficientdet", "--compound-coef", "0",
                    "--output", str(archive)], check=True, capture_output=True)
    return extract_archive(archive, workdir / "model")
