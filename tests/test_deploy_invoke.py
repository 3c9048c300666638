"""`smvision invoke` against a local `smvision serve` through AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME:
the same command as for a real endpoint, unchanged."""

from __future__ import annotations

import io
import json

import pytest

from conftest import BUCKET
from smvision.cli import main
from support import free_port


@pytest.fixture
def runtime_at_server(d0_server, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME", d0_server.url)
    return d0_server


def test_s3_images_as_csv(runtime_at_server, capsys):
    assert main(["invoke", "--name", "d0", "--s3", f"{BUCKET}/rocket.jpg", f"s3://{BUCKET}/coffee.png"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert [r["source"] for r in results] == [f"s3://{BUCKET}/rocket.jpg", f"s3://{BUCKET}/coffee.png"]
    assert [r["image_size"] for r in results] == [[640, 427], [600, 400]]


def test_params_and_jsonlines_answer(runtime_at_server, capsys):
    assert main(["invoke", "--name", "d0", "--s3", f"{BUCKET}/rocket.jpg", f"{BUCKET}/astronaut.png",
                 "--content-type", "application/jsonlines", "--accept", "application/jsonlines",
                 "--param", "pred_threshold=0.005", "iou_threshold=0.3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    results = [json.loads(line) for line in lines]
    assert [r["source"] for r in results] == [f"s3://{BUCKET}/rocket.jpg", f"s3://{BUCKET}/astronaut.png"]
    assert all(r["detections"] for r in results), "pred_threshold 0.005 lets random-weight boxes through"


def test_body_from_a_file_and_from_stdin(runtime_at_server, photos, tmp_path, monkeypatch, capsys):
    image = tmp_path / "chelsea.png"
    image.write_bytes(photos["chelsea.png"])
    assert main(["invoke", "--name", "d0", str(image), "--output", str(tmp_path / "answer.json")]) == 0
    assert json.loads((tmp_path / "answer.json").read_text())["image_size"] == [451, 300]

    body = json.dumps({"bucket": BUCKET, "key": "coffee.png"}).encode()
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(body)))
    assert main(["invoke", "--name", "d0", "-", "--content-type", "application/json"]) == 0
    assert json.loads(capsys.readouterr().out)["image_size"] == [600, 400]


def test_container_error_shows_the_original_status_and_message(runtime_at_server, capsys):
    assert main(["invoke", "--name", "d0", "--s3", f"{BUCKET}/rocket.jpg", "--content-type", "application/json",
                 "--param", "pred_threshold=10"]) == 1
    err = capsys.readouterr().err
    assert "endpoint d0: the model answered 400:" in err and "pred_threshold" in err

    assert main(["invoke", "--name", "d0", "--s3", f"{BUCKET}/no-such-photo.jpg"]) == 1
    err = capsys.readouterr().err
    assert "the model answered 404:" in err and "no-such-photo.jpg" in err


def test_a_directory_as_the_body_or_the_output_is_a_usage_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME", f"http://127.0.0.1:{free_port()}")  # never reached
    assert main(["invoke", "--name", "d0", str(tmp_path)]) == 2
    assert capsys.readouterr().err == (f"smvision: error: the body file {tmp_path} is a directory: "
                                       "give a file, or - for stdin\n")
    body = tmp_path / "request.csv"
    body.write_text(f"{BUCKET}/rocket.jpg\n")
    # refused before the endpoint is called: the answer would have nowhere to go
    assert main(["invoke", "--name", "d0", str(body), "--output", str(tmp_path)]) == 2
    assert capsys.readouterr().err == f"smvision: error: --output {tmp_path} is a directory: give a file name\n"
