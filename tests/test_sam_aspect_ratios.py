"""Images of extreme aspect ratio on every SAM kind: SAM resizes the long side to 1024, and
a short side that would round to 0 px is kept at 1 px, so such images get answers (what
SamPredictor gives with that 1 px side), never a 500. EfficientDet already answers them."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest

from smvision.container.handler import Handler
from smvision.inflight import request_scope

#: random weights: masks only get through with the filters off
LOOSE = {"points_per_side": 2, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0, "box_nms_thresh": 1.0,
         "crop_nms_thresh": 1.0}


@pytest.fixture(scope="module")
def handlers(sam_model_dir):
    out = {}
    for kind in ("sam", "sam-encode", "sam-decode"):
        out[kind] = Handler(str(sam_model_dir(kind)))
        out[kind].load()
    return out


def call(handler, body):
    with request_scope(None):
        data, _ = handler.invoke(json.dumps(body).encode(), "application/json", None)
    return json.loads(data)


def image_bytes(height: int, width: int, format: str = "PNG") -> bytes:
    from PIL import Image

    pixels = np.random.default_rng(height * 7 + width).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=format)
    return buffer.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def npy_b64(array: np.ndarray) -> str:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return b64(buffer.getvalue())


def rle_masks(masks) -> np.ndarray:
    from pycocotools import mask as mask_utils

    return np.stack([mask_utils.decode(m).astype(bool) for m in masks])


def thin_safe_predictor(sam):
    """SamPredictor whose ResizeLongestSide keeps every side at least 1 px (upstream rounds
    the short side of a 5000x1 image to 0 and fails): the answer expected of us."""
    from segment_anything import SamPredictor
    from segment_anything.utils.transforms import ResizeLongestSide

    class AtLeastOnePixel(ResizeLongestSide):
        @staticmethod
        def get_preprocess_shape(oldh, oldw, long_side_length):
            height, width = ResizeLongestSide.get_preprocess_shape(oldh, oldw, long_side_length)
            return max(height, 1), max(width, 1)

    predictor = SamPredictor(sam)
    predictor.transform = AtLeastOnePixel(sam.image_encoder.img_size)
    return predictor


@pytest.mark.parametrize("size", [(1, 5000), (5000, 1)])
def test_a_5000x1_png_gets_sam_predictors_answer_from_sam_and_sam_encode(handlers, tiny_sam, size):
    from smvision.images import decode_image

    data = image_bytes(*size)
    height, width = size
    predictor = thin_safe_predictor(tiny_sam)
    predictor.set_image(decode_image(data, "image"))
    expected_input = [max(1, round(1024 * height / max(size))), max(1, round(1024 * width / max(size)))]

    encoded = call(handlers["sam-encode"], {"image": b64(data)})
    assert encoded["original_size"] == list(size) and encoded["input_size"] == expected_input
    embedding = np.load(io.BytesIO(base64.b64decode(encoded["embedding"])))
    assert np.abs(embedding - predictor.get_image_embedding().numpy()).max() < 1e-4

    point = [width // 2, height // 2]
    answer = call(handlers["sam"], {"image": b64(data), "points": [point], "labels": [1]})
    expected, scores, _ = predictor.predict(point_coords=np.array([point]), point_labels=np.array([1]))
    masks = rle_masks(answer["masks"])
    assert answer["original_size"] == list(size) and masks.shape == expected.shape == (3, *size)
    assert (masks != expected).sum() <= 2  # float rounding at an edge at most
    np.testing.assert_allclose(answer["scores"], scores, atol=1e-3)

    # sam-decode on sam-encode's embedding: the same masks
    decoded = call(handlers["sam-decode"], {"image_embedding": encoded["embedding"], "original_size": list(size),
                                            "points": [point], "labels": [1]})
    np.testing.assert_array_equal(rle_masks(decoded["masks"]), masks)

    everything = call(handlers["sam"], {"image": b64(data), "mode": "everything", **LOOSE, "crop_n_layers": 1})
    assert everything["mode"] == "everything" and everything["masks"]
    assert all(m["segmentation"]["size"] == list(size) for m in everything["masks"])


def test_a_65000x1_jpeg_is_encoded_and_segmented(handlers):
    data = image_bytes(1, 65000, "JPEG")
    encoded = call(handlers["sam-encode"], {"image": b64(data)})
    assert encoded["original_size"] == [1, 65000] and encoded["input_size"] == [1, 1024]
    answer = call(handlers["sam"], {"image": b64(data), "points": [[30000, 0]], "labels": [1]})
    assert answer["original_size"] == [1, 65000] and rle_masks(answer["masks"]).shape == (3, 1, 65000)


@pytest.mark.parametrize("size, layers", [((1, 1), 3), ((2, 3), 2)])
def test_everything_with_crop_layers_on_a_tiny_image_skips_the_empty_crops(handlers, size, layers):
    """generate_crop_boxes gives crops with no pixels on images a few pixels wide (x0 >=
    x1): they hold no masks, so they are skipped rather than encoded."""
    answer = call(handlers["sam"], {"image": b64(image_bytes(*size)), "mode": "everything", **LOOSE,
                                    "points_per_side": 1, "crop_n_layers": layers})
    height, width = size
    assert answer["original_size"] == [height, width] and answer["masks"]
    for mask in answer["masks"]:
        assert mask["segmentation"]["size"] == [height, width]
        x, y, w, h = mask["crop_box"]
        assert w > 0 and h > 0 and x + w <= width and y + h <= height


@pytest.mark.parametrize("size", [(1, 5000), (2, 20000), (20000, 2)])
def test_sam_decode_with_a_thin_original_size_answers_postprocessed_masks(handlers, tiny_sam, size):
    """original_size [1, 5000]: the resized height rounds to 0 upstream; we keep 1 px, and
    the masks are Sam.postprocess_masks of the logits with that input size."""
    import torch

    embedding = np.random.default_rng(1).normal(size=(1, 256, 64, 64)).astype(np.float32)
    height, width = size
    point = [width - 1, height - 1]
    answer = call(handlers["sam-decode"], {"image_embedding": npy_b64(embedding), "original_size": list(size),
                                           "points": [point], "labels": [1], "return_logits": True})
    logits = np.load(io.BytesIO(base64.b64decode(answer["low_res_logits"])))
    input_size = (max(1, round(1024 * height / max(size))), max(1, round(1024 * width / max(size))))
    expected = tiny_sam.postprocess_masks(torch.from_numpy(logits)[None], input_size, size)[0].numpy() > 0
    masks = rle_masks(answer["masks"])
    assert masks.shape == (3, *size) and (masks != expected).sum() <= 2

    everything = call(handlers["sam-decode"], {"image_embedding": npy_b64(embedding), "original_size": list(size),
                                               "mode": "everything", **LOOSE})
    assert everything["masks"] and all(m["segmentation"]["size"] == list(size) for m in everything["masks"])
