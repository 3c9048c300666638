"""sam-decode: embedding + prompts -> the masks SamPredictor.predict gives, or a 400 that says why."""

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
    handler = Handler(str(sam_model_dir("sam-decode")))
    handler.load()
    return handler


@pytest.fixture(scope="module")
def predictor(tiny_sam, photos):
    """SamPredictor on rocket.jpg (427x640) with the archive's SAM."""
    from segment_anything import SamPredictor

    predictor = SamPredictor(tiny_sam)
    predictor.set_image(decode_image(photos["rocket.jpg"], "rocket"))
    return predictor


def b64npy(array: np.ndarray) -> str:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return base64.b64encode(buffer.getvalue()).decode()


def call(handler, body, content_type="application/json"):
    body, kind = handler.invoke(json.dumps(body).encode(), content_type, None)
    assert kind == "application/json"
    return json.loads(body)


def rle_masks(answer) -> np.ndarray:
    from pycocotools import mask as mask_utils

    return np.stack([mask_utils.decode(m).astype(bool) for m in answer["masks"]])


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


PROMPTS = {
    "point": ({"points": [[320, 200]], "labels": [1]}, dict(point_coords=np.array([[320, 200]]), point_labels=np.array([1]))),
    "points-and-box": (
        {"points": [[300, 150], [50, 400]], "labels": [1, 0], "box": [200, 50, 450, 420]},
        dict(point_coords=np.array([[300, 150], [50, 400]]), point_labels=np.array([1, 0]), box=np.array([200, 50, 450, 420])),
    ),
    "box": ({"box": [10, 20, 600, 400]}, dict(box=np.array([10, 20, 600, 400]))),
}


@pytest.mark.parametrize("name", PROMPTS)
@pytest.mark.parametrize("multimask", [True, False])
def test_masks_equal_sam_predictor(handler, predictor, name, multimask):
    params, predictor_args = PROMPTS[name]
    embedding = predictor.get_image_embedding().numpy()
    answer = call(handler, {"image_embedding": b64npy(embedding), "original_size": [427, 640],
                            "multimask_output": multimask, **params})
    expected, scores, _ = predictor.predict(**predictor_args, multimask_output=multimask)
    masks = rle_masks(answer)
    assert masks.shape == expected.shape == ((3 if multimask else 1), 427, 640)
    assert answer["mask_format"] == "rle" and answer["original_size"] == [427, 640]
    assert all(iou(m, e) >= 0.99 for m, e in zip(masks, expected)), [iou(m, e) for m, e in zip(masks, expected)]
    assert np.allclose(answer["scores"], scores, atol=1e-3)
    assert "low_res_logits" not in answer


def test_embedding_from_s3_and_float16_and_logits_for_the_next_round(handler, predictor, photos):
    import boto3

    embedding = predictor.get_image_embedding().numpy()
    buffer = io.BytesIO()
    np.save(buffer, embedding.astype(np.float16))
    boto3.client("s3").put_object(Bucket=BUCKET, Key="embeddings/rocket-fp16.npy", Body=buffer.getvalue())
    prompt = {"original_size": [427, 640], "points": [[320, 200]], "labels": [1], "return_logits": True}
    by_uri, by_key = call(handler, [
        {"image_embedding": {"s3_uri": f"s3://{BUCKET}/embeddings/rocket-fp16.npy"}, **prompt},
        {"image_embedding": {"bucket": BUCKET, "key": "embeddings/rocket-fp16.npy"}, **prompt},
    ])
    assert by_uri["masks"] == by_key["masks"]
    expected, _, low_res = predictor.predict(np.array([[320, 200]]), np.array([1]), return_logits=False)
    assert all(iou(m, e) >= 0.98 for m, e in zip(rle_masks(by_uri), expected))  # fp16 embedding: close
    logits = np.load(io.BytesIO(base64.b64decode(by_uri["low_res_logits"])))
    assert logits.shape == (3, 256, 256) and logits.dtype == np.float32
    # the best mask's logits go back in as mask_input, as with SamPredictor.predict(mask_input=...)
    best = int(np.argmax(by_uri["scores"]))
    refined = call(handler, {"image_embedding": b64npy(embedding), "original_size": [427, 640],
                             "points": [[320, 200], [100, 100]], "labels": [1, 0], "multimask_output": False,
                             "mask_input": b64npy(logits[best][None])})
    again, _, _ = predictor.predict(np.array([[320, 200], [100, 100]]), np.array([1, 0]),
                                    mask_input=logits[best][None], multimask_output=False)
    assert iou(rle_masks(refined)[0], again[0]) >= 0.98


def test_every_mask_format_is_answered(handler, predictor):
    embedding = b64npy(predictor.get_image_embedding().numpy())
    for mask_format in ("png", "polygon", "npy"):
        answer = call(handler, {"image_embedding": embedding, "original_size": [427, 640], "box": [10, 20, 600, 400],
                                "multimask_output": False, "mask_format": mask_format})
        assert answer["mask_format"] == mask_format and len(answer["masks"]) == 1


GOOD = {"original_size": [427, 640], "points": [[320, 200]], "labels": [1]}


@pytest.mark.parametrize(
    "record, content_type, status, words",
    [
        ({**GOOD, "image_embedding": b64npy(np.zeros((1, 256, 32, 32), np.float32))}, None, 400, "got shape (1, 256, 32, 32)"),
        ({**GOOD, "image_embedding": b64npy(np.zeros((1, 256, 64, 64), np.int32))}, None, 400, "dtype int32"),
        ({**GOOD, "image_embedding": "not base64!"}, None, 400, "not valid base64"),
        ({**GOOD, "image_embedding": base64.b64encode(b"hello").decode()}, None, 400, "is not a .npy array"),
        ({**GOOD, "image_embedding": {"url": "x"}}, None, 400, "must be base64 .npy"),
        ({"points": [[1, 2]], "labels": [1], "image_embedding": "AAAA"}, None, 400, "'original_size' [H, W] is missing"),
        ({**GOOD, "original_size": [427, -1], "image_embedding": "AAAA"}, None, 400, "two positive integers"),
        ({"original_size": [427, 640], "image_embedding": "AAAA"}, None, 400, "no prompt"),
        ({**GOOD, "points": [[700, 10]], "image_embedding": "AAAA"}, None, 400, "outside the image"),
        ({**GOOD, "labels": [1, 0], "image_embedding": "AAAA"}, None, 400, "2 labels for 1 points"),
        ({**GOOD, "box": [50, 50, 10, 80], "image_embedding": "AAAA"}, None, 400, "x2 >= x1"),
        (GOOD, None, 400, "'image_embedding' is missing"),
        ({**GOOD, "bucket": BUCKET, "key": "rocket.jpg"}, None, 400, "not an image"),
        ({**GOOD, "image_embedding": {"s3_uri": f"s3://{BUCKET}/embeddings/none.npy"}}, None, 404, "none.npy"),
        ({**GOOD, "pred_threshold": 0.5, "image_embedding": "AAAA"}, None, 400, "unknown parameter 'pred_threshold'"),
    ],
)
def test_bad_records_say_what_is_wrong(handler, record, content_type, status, words):
    with pytest.raises(InferenceError) as caught:
        handler.invoke(json.dumps(record).encode(), content_type or "application/json", None)
    assert caught.value.status_code == status, caught.value.message
    assert words in caught.value.message


def test_image_bodies_are_415(handler, photos):
    for body, content_type in ((photos["rocket.jpg"], "image/jpeg"), (f"{BUCKET}/rocket.jpg".encode(), "text/csv")):
        with pytest.raises(InferenceError) as caught:
            handler.invoke(body, content_type, None)
        assert caught.value.status_code == 415 and "application/json, application/jsonlines" in caught.value.message


def npz_body(**arrays) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def test_npz_body_answers_as_json_does(handler, predictor):
    """One record as numpy.savez arrays (no base64, no JSON): the same answer."""
    embedding = predictor.get_image_embedding().numpy()
    params = {"original_size": [427, 640], "points": [[320, 200], [100, 100]], "labels": [1, 0], "return_logits": True}
    expected = call(handler, {"image_embedding": b64npy(embedding), **params})
    body, kind = handler.invoke(npz_body(image_embedding=embedding, **{k: np.array(v) for k, v in params.items()}),
                                "application/x-npz", None)
    assert kind == "application/json"
    assert json.loads(body) == expected
    # float16 embedding, a mask_input array, a string and a flag as 0-d arrays
    logits = np.load(io.BytesIO(base64.b64decode(expected["low_res_logits"])))[:1]
    as_json = call(handler, {"image_embedding": b64npy(embedding.astype(np.float16)), "original_size": [427, 640],
                             "box": [10, 20, 600, 400], "mask_input": b64npy(logits), "multimask_output": False,
                             "mask_format": "polygon"})
    body, _ = handler.invoke(npz_body(image_embedding=embedding.astype(np.float16), original_size=np.array([427, 640]),
                                      box=np.array([10, 20, 600, 400]), mask_input=logits,
                                      multimask_output=np.array(False), mask_format=np.array("polygon")),
                             "application/x-npz", None)
    assert json.loads(body) == as_json


@pytest.mark.parametrize(
    "body, status, words",
    [
        (b"PK\x03\x04 not a zip", 400, "not an .npz of plain arrays"),
        (npz_body(image_embedding=np.array([{"a": 1}], dtype=object), original_size=np.array([427, 640])), 400,
         "the .npz member 'image_embedding.npy' is not a .npy array"),
        (npz_body(image_embedding=np.zeros((1, 256, 32, 32), np.float32), **{k: np.array(v) for k, v in GOOD.items()}),
         400, "got shape (1, 256, 32, 32)"),
        (npz_body(image_embedding=np.zeros((1, 256, 64, 64), np.float32), original_size=np.array([427.0, 640.0]),
                  points=np.array([[1, 2]]), labels=np.array([1])), 400, "two positive integers"),
        (npz_body(), 400, "holds no arrays"),
    ],
)
def test_bad_npz_bodies_say_what_is_wrong(handler, body, status, words):
    with pytest.raises(InferenceError) as caught:
        handler.invoke(body, "application/x-npz", None)
    assert caught.value.status_code == status, caught.value.message
    assert words in caught.value.message


def test_compressed_npz_body_answers_the_same(handler, predictor):
    embedding = predictor.get_image_embedding().numpy()
    prompts = {"original_size": np.array([427, 640]), "points": np.array([[320, 200]]), "labels": np.array([1])}
    stored, compressed = io.BytesIO(), io.BytesIO()
    np.savez(stored, image_embedding=embedding, **prompts)
    np.savez_compressed(compressed, image_embedding=embedding, **prompts)
    answers = [json.loads(handler.invoke(b.getvalue(), "application/x-npz", None)[0]) for b in (stored, compressed)]
    assert answers[0] == answers[1] and len(answers[0]["masks"]) == 3
