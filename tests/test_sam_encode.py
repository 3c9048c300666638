"""sam-encode: image records -> embeddings equal to SamPredictor's, as .npy or JSON."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest

from conftest import BUCKET
from smvision.container.handler import Handler
from smvision.errors import InferenceError
from smvision.images import decode_image


@pytest.fixture(scope="module")
def handler(sam_model_dir, photos):
    handler = Handler(str(sam_model_dir("sam-encode")))
    handler.load()
    return handler


def call(handler, body, content_type="application/json", accept=None):
    data = json.dumps(body) if not isinstance(body, (bytes, str)) else body
    return handler.invoke(data.encode() if isinstance(data, str) else data, content_type, accept)


def npy(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


def predictor_embedding(sam, rgb: np.ndarray) -> np.ndarray:
    from segment_anything import SamPredictor

    predictor = SamPredictor(sam)
    predictor.set_image(rgb)
    return predictor.get_image_embedding().numpy()


def test_npy_answer_equals_sam_predictor(handler, tiny_sam, photos):
    body, kind = call(handler, {"bucket": BUCKET, "key": "rocket.jpg"}, accept="application/x-npy")
    assert kind == "application/x-npy"
    embedding = npy(body)
    assert embedding.shape == (1, 256, 64, 64) and embedding.dtype == np.float32
    expected = predictor_embedding(tiny_sam, decode_image(photos["rocket.jpg"], "rocket"))
    assert np.abs(embedding - expected).max() < 1e-4


def test_json_batch_with_sizes_and_float16(handler, tiny_sam, photos):
    body, kind = call(
        handler,
        [
            {"bucket": BUCKET, "key": "exif/coffee-rotated.jpg"},
            {"image": base64.b64encode(photos["astronaut.png"]).decode(), "embedding_dtype": "float16"},
        ],
    )
    first, second = json.loads(body)
    assert kind == "application/json"
    assert first["source"] == f"s3://{BUCKET}/exif/coffee-rotated.jpg"
    assert (first["original_size"], first["input_size"]) == ([600, 400], [1024, 683])  # EXIF applied: upright
    rotated = npy(base64.b64decode(first["embedding"]))
    expected = predictor_embedding(tiny_sam, decode_image(photos["exif/coffee-rotated.jpg"], "coffee"))
    assert np.abs(rotated - expected).max() < 1e-4  # batched with another image: same numbers
    half = npy(base64.b64decode(second["embedding"]))
    assert half.dtype == np.float16 and half.nbytes == 2 * 256 * 64 * 64
    assert (second["original_size"], second["input_size"]) == ([512, 512], [1024, 1024])
    full = predictor_embedding(tiny_sam, decode_image(photos["astronaut.png"], "astronaut"))
    assert np.abs(half.astype(np.float32) - full).max() < 1e-2


def test_csv_lines_are_records_too(handler):
    body, _ = call(handler, f"{BUCKET}/rocket.jpg\n{BUCKET}/coffee.png\n", "text/csv")
    assert [r["original_size"] for r in json.loads(body)] == [[427, 640], [400, 600]]


def test_output_s3_uri_writes_the_npy_and_answers_its_uri(handler, photos):
    import boto3

    s3 = boto3.client("s3")
    body, _ = call(
        handler,
        [
            {"bucket": BUCKET, "key": "rocket.jpg", "output_s3_uri": f"s3://{BUCKET}/embeddings/rocket-1.npy"},
            {"bucket": BUCKET, "key": "coffee.png", "output_s3_uri": f"s3://{BUCKET}/embeddings/",
             "embedding_dtype": "float16"},
        ],
    )
    first, second = json.loads(body)
    assert "embedding" not in first and first["embedding_s3_uri"] == f"s3://{BUCKET}/embeddings/rocket-1.npy"
    assert second["embedding_s3_uri"] == f"s3://{BUCKET}/embeddings/coffee.npy"
    stored = npy(s3.get_object(Bucket=BUCKET, Key="embeddings/coffee.npy")["Body"].read())
    assert stored.shape == (1, 256, 64, 64) and stored.dtype == np.float16 and second["embedding_dtype"] == "float16"
    again, _ = call(handler, {"bucket": BUCKET, "key": "rocket.jpg"}, accept="application/x-npy")
    stored = npy(s3.get_object(Bucket=BUCKET, Key="embeddings/rocket-1.npy")["Body"].read())
    assert np.array_equal(stored, npy(again))


@pytest.mark.parametrize(
    "body, accept, status, words",
    [
        ({"bucket": BUCKET, "key": "rocket.jpg", "embedding_dtype": "int8"}, None, 400, "embedding_dtype must be one of"),
        ({"bucket": BUCKET, "key": "rocket.jpg", "points": [[1, 2]]}, None, 400, "unknown parameter 'points'"),
        ({"bucket": BUCKET, "key": "rocket.jpg", "output_s3_uri": "bucket/key"}, None, 400, "output_s3_uri must be"),
        ({"embedding_dtype": "float16"}, None, 400, "names no image"),
        ([{"bucket": BUCKET, "key": "rocket.jpg"}] * 2, "application/x-npy", 406, "answers one record"),
        ({"bucket": BUCKET, "key": "rocket.jpg"}, "image/png", 406, "application/x-npy"),
        ({"bucket": BUCKET, "key": "missing.jpg"}, None, 404, "missing.jpg"),
    ],
)
def test_bad_requests_say_what_is_wrong(handler, body, accept, status, words):
    with pytest.raises(InferenceError) as caught:
        call(handler, body, accept=accept)
    assert caught.value.status_code == status and words in caught.value.message


def test_precision_setting(sam_model_dir, monkeypatch, photos):
    import torch

    from smvision.kinds import load_model

    monkeypatch.setenv("SAM_ENCODER_PRECISION", "fp16")
    with pytest.raises(ValueError, match="fp16 needs a GPU"):
        load_model(sam_model_dir("sam-encode"))
    if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        pytest.skip("this CPU has no native bfloat16")
    monkeypatch.setenv("SAM_ENCODER_PRECISION", "bf16")
    model = load_model(sam_model_dir("sam-encode"))
    image = decode_image(photos["rocket.jpg"], "rocket")
    bf16 = model.encoder.encode([image])[0].array
    monkeypatch.setenv("SAM_ENCODER_PRECISION", "fp32")
    fp32 = load_model(sam_model_dir("sam-encode")).encoder.encode([image])[0].array
    assert bf16.dtype == np.float32
    cosine = float((bf16 * fp32).sum() / np.linalg.norm(bf16) / np.linalg.norm(fp32))
    assert cosine > 0.99 and not np.array_equal(bf16, fp32)
