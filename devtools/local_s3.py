"""A local S3 for the demo, the benchmarks and the tests: moto's standalone server on
127.0.0.1, reached through boto3 with AWS_ENDPOINT_URL_S3 exactly as MinIO would be;
and the real photos they put there (scikit-image's)."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

from smvision.deploy.server_process import ServerProcess, free_port, http_get

#: the bin folder of this interpreter's venv: the smvision, serve and moto_server scripts
BIN = Path(sys.executable).parent
__all__ = ["BIN", "S3_ENV", "LocalS3", "skimage_photo"]
S3_ENV = ("AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")


def skimage_photo(name: str) -> Path:
    """A real photograph shipped inside the scikit-image wheel (astronaut.png, rocket.jpg...)."""
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("scikit-image is not installed: pip install -r requirements-test.txt")
    return Path(spec.submodule_search_locations[0]) / "data" / name


def moto_ready(server: ServerProcess) -> bool:
    """moto's server answers its own API."""
    return http_get(server.url + "/moto-api/")[0] == 200


class LocalS3:
    """moto server on a free port; while open, this process's boto3 (and children given
    .env) talk to it with dummy credentials."""

    def __init__(self, log_path: Path | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            "AWS_ENDPOINT_URL_S3": self.url,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
        }
        self.server = ServerProcess([BIN / "moto_server", "-H", "127.0.0.1", "-p", str(self.port)], self.url,
                                    name="the local S3 (moto server)", log_path=log_path, ready=moto_ready,
                                    ready_timeout_s=30)
        self._saved: dict[str, str | None] = {}

    def __enter__(self) -> "LocalS3":
        self.server.start_and_wait()
        self._saved = {key: os.environ.get(key) for key in S3_ENV}
        os.environ.update(self.env)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.stop()
        for key, value in self._saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value

    def put(self, bucket: str, objects: dict[str, bytes]) -> None:
        """Create bucket (if needed) and upload key -> bytes."""
        import boto3

        s3 = boto3.client("s3")
        if bucket not in {b["Name"] for b in s3.list_buckets().get("Buckets", [])}:
            s3.create_bucket(Bucket=bucket)
        for key, data in objects.items():
            s3.put_object(Bucket=bucket, Key=key, Body=data)
