"""sam: image + prompts -> masks in one call; the second prompt on an image does not encode it again."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest
import requests

from conftest import BUCKET
from smvision.container.handler import Handler
from smvision.errors import InferenceError
from smvision.images import decode_image
from smvision.inflight import request_scope
from smvision.deploy.server_process import smvision_serve


class CountingEncoder:
    """Wraps the model's encoder to count the images it encodes."""

    def __init__(self, encoder) -> None:
        self.encoder = encoder
        self.images = 0

    def encode(self, images):
        self.images += len(images)
        return self.encoder.encode(images)


@pytest.fixture
def handler(sam_model_dir, photos, monkeypatch):
    monkeypatch.setenv("SAM_EMBEDDING_CACHE_SIZE", "2")
    handler = Handler(str(sam_model_dir("sam")))
    handler.load()
    handler.model.encoder = CountingEncoder(handler.model.encoder)
    return handler


def call(handler, body, content_type="application/json"):
    with request_scope(None) as inflight:
        data, _ = handler.invoke(json.dumps(body).encode(), content_type, None)
    return json.loads(data), inflight.stages


def rle_masks(answer) -> np.ndarray:
    from pycocotools import mask as mask_utils

    return np.stack([mask_utils.decode(m).astype(bool) for m in answer["masks"]])


def test_second_prompt_on_the_same_image_does_not_encode_again(handler, tiny_sam, photos):
    from segment_anything import SamPredictor

    first, stages = call(handler, {"bucket": BUCKET, "key": "rocket.jpg", "points": [[320, 200]], "labels": [1]})
    assert first["embedding_cache"] == "miss" and "encode" in stages and handler.model.encoder.images == 1
    second, stages = call(handler, {"s3_uri": f"s3://{BUCKET}/rocket.jpg", "box": [10, 20, 600, 400],
                                    "multimask_output": False})
    assert second["embedding_cache"] == "hit" and "encode" not in stages and "decode" not in stages
    assert handler.model.encoder.images == 1
    assert second["source"] == f"s3://{BUCKET}/rocket.jpg" and second["original_size"] == [427, 640]
    # the masks are SamPredictor's on the same image and prompts
    predictor = SamPredictor(tiny_sam)
    predictor.set_image(decode_image(photos["rocket.jpg"], "rocket"))
    for got, kwargs in ((first, dict(point_coords=np.array([[320, 200]]), point_labels=np.array([1]))),
                        (second, dict(box=np.array([10, 20, 600, 400]), multimask_output=False))):
        expected, scores, _ = predictor.predict(**kwargs)
        masks = rle_masks(got)
        assert masks.shape == expected.shape
        assert all((m & e).sum() / max((m | e).sum(), 1) >= 0.99 for m, e in zip(masks, expected))


def test_cache_keys_follow_etag_and_content(handler, photos):
    import boto3

    s3 = boto3.client("s3")
    s3.put_object(Bucket=BUCKET, Key="changing.jpg", Body=photos["rocket.jpg"])
    prompt = {"points": [[10, 10]], "labels": [1]}
    assert call(handler, {"bucket": BUCKET, "key": "changing.jpg", **prompt})[0]["embedding_cache"] == "miss"
    assert call(handler, {"bucket": BUCKET, "key": "changing.jpg", **prompt})[0]["embedding_cache"] == "hit"
    s3.put_object(Bucket=BUCKET, Key="changing.jpg", Body=photos["coffee.png"])  # a new version: a new ETag
    answer, _ = call(handler, {"bucket": BUCKET, "key": "changing.jpg", **prompt})
    assert answer["embedding_cache"] == "miss" and answer["original_size"] == [400, 600]
    # inline bytes are keyed by content; one request's second record hits what its first stored
    inline = {"image": base64.b64encode(photos["astronaut.png"]).decode(), **prompt}
    answers, _ = call(handler, [inline, inline])
    assert [a["embedding_cache"] for a in answers] == ["miss", "hit"]
    # capacity 2 (coffee's version of changing.jpg, astronaut): a third image evicts the
    # least recently used, changing.jpg
    assert call(handler, {"bucket": BUCKET, "key": "rocket.jpg", **prompt})[0]["embedding_cache"] == "miss"
    assert call(handler, {"bucket": BUCKET, "key": "changing.jpg", **prompt})[0]["embedding_cache"] == "miss"
    assert len(handler.model.cache) == 2


def test_a_bad_prompt_is_a_400_before_any_encoding(handler):
    for record, words in (
        ({"bucket": BUCKET, "key": "coffee.png", "points": [[900, 10]], "labels": [1]}, "outside the image"),
        ({"bucket": BUCKET, "key": "coffee.png"}, "no prompt"),
        ({"bucket": BUCKET, "key": "coffee.png", "box": [1, 2, 3, 4], "pred_threshold": 0.2}, "unknown parameter"),
        ({"box": [1, 2, 3, 4]}, "names no image"),
    ):
        with pytest.raises(InferenceError) as caught:
            call(handler, record)
        assert caught.value.status_code == 400 and words in caught.value.message
    assert handler.model.encoder.images == 0


def test_over_http_the_answer_and_server_timing_show_the_hit(sam_model_dir, photos, tmp_path):
    server = smvision_serve(sam_model_dir("sam"), log_path=tmp_path / "serve.log")
    try:
        server.wait_ready()
        body = {"bucket": BUCKET, "key": "coffee.png", "points": [[300, 200]], "labels": [1]}
        first = requests.post(server.url + "/invocations", json=body, timeout=60)
        second = requests.post(server.url + "/invocations", json={**body, "points": [[100, 100]]}, timeout=60)
        assert (first.status_code, second.status_code) == (200, 200), (first.text, second.text)
        assert (first.json()["embedding_cache"], second.json()["embedding_cache"]) == ("miss", "hit")
        timing = second.headers.get("Server-Timing")
        if timing is not None:  # the server reports the kind's stages: no encode on a hit
            assert "encode" not in timing and "encode" in first.headers["Server-Timing"]
    finally:
        server.stop()
