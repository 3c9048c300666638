"""Image decoding limits and response encoding."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from smvision.errors import InferenceError
from smvision.images import decode_image
from smvision.kinds import KINDS
from smvision.responses import Results
from support import skimage_photo


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **kwargs)
    return out.getvalue()


def test_decodes_real_photo_to_rgb_uint8():
    array = decode_image(skimage_photo("rocket.jpg").read_bytes(), "rocket")
    assert array.dtype == np.uint8 and array.ndim == 3 and array.shape[2] == 3
    assert array.shape[:2] == (427, 640)


def test_exif_orientation_is_applied():
    image = Image.new("RGB", (60, 20), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6
    array = decode_image(encode(image, "JPEG", exif=exif), "x")
    assert array.shape[:2] == (60, 20)  # rotated upright: now tall


def test_grey_and_rgba_become_rgb():
    assert decode_image(encode(Image.new("L", (8, 8), 7), "PNG"), "x").shape == (8, 8, 3)
    assert decode_image(encode(Image.new("RGBA", (8, 8)), "PNG"), "x").shape == (8, 8, 3)


def test_pixel_limit_is_413_before_decoding():
    data = encode(Image.new("RGB", (400, 300)), "PNG")
    with pytest.raises(InferenceError) as caught:
        decode_image(data, "big.png", max_pixels=100_000)
    assert caught.value.status_code == 413
    assert "400x300" in caught.value.message


def test_truncated_and_garbage_are_400():
    jpeg = skimage_photo("rocket.jpg").read_bytes()
    for data, words in ((jpeg[: len(jpeg) // 2], "truncated"), (b"hello" * 20, "not an image")):
        with pytest.raises(InferenceError) as caught:
            decode_image(data, "rec")
        assert caught.value.status_code == 400
        assert words in caught.value.message


#: what every kind answers: JSON and JSON lines (EfficientDet's row)
ANSWERS = KINDS["efficientdet"].media
choose_accept = ANSWERS.choose_accept


def encode_results(results, is_list, accept):
    return ANSWERS.encode(Results(results, is_list), accept)


def test_accept_negotiation():
    assert choose_accept(None) == "application/json"
    assert choose_accept("*/*") == "application/json"
    assert choose_accept("application/jsonlines") == "application/jsonlines"
    assert choose_accept("text/html, application/json;q=0.9") == "application/json"
    with pytest.raises(InferenceError) as caught:
        choose_accept("text/html")
    assert caught.value.status_code == 406


def test_response_shape_mirrors_request_shape():
    results = [{"n": 1}, {"n": 2}]
    body, kind = encode_results(results, True, "application/json")
    assert (json.loads(body), kind) == (results, "application/json")
    body, _ = encode_results(results[:1], False, None)
    assert json.loads(body) == {"n": 1}
    body, kind = encode_results(results, True, "application/jsonlines")
    assert kind == "application/jsonlines"
    assert [json.loads(line) for line in body.decode().splitlines()] == results


@pytest.mark.parametrize("accept", ["application/json", "application/jsonlines"])
@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan"), np.float32("inf")])
def test_an_answer_never_carries_bare_infinity_or_nan(accept, value):
    """Python's json writes Infinity / NaN, which no JSON reader takes: a result holding one
    is our bug, so it fails loudly (a 500 with the traceback in the log), never reaching
    the caller as invalid JSON."""
    with pytest.raises(ValueError, match="not JSON compliant"):
        encode_results([{"masks": {"coordinates": [[0.0, value]]}}], False, accept)
    body, _ = encode_results([{"score": 0.5, "bbox": [0.0, 1e308]}], True, accept)
    assert json.loads(body, parse_constant=lambda name: pytest.fail(f"bare {name} in {body!r}"))


def test_pixel_limit_above_pillows_own_is_honoured():
    data = encode(Image.new("L", (10_000, 9_500)), "PNG")  # 95 MP: over Pillow's built-in 89 MP
    assert decode_image(data, "x", max_pixels=100_000_000).shape == (9_500, 10_000, 3)


def test_huge_integer_threshold_is_400():
    from smvision.params import unit_interval

    with pytest.raises(InferenceError) as caught:
        unit_interval(10**400, "pred_threshold", "record 0")
    assert caught.value.status_code == 400 and "pred_threshold" in caught.value.message


def test_fetch_gives_bytes_and_identity_without_decoding(photos):
    import boto3

    from conftest import BUCKET
    from smvision.images import ImageLoader
    from smvision.records import ImageSource, Record

    loader = ImageLoader()
    record = Record(0, ImageSource(bucket=BUCKET, key="coffee.png"), {})
    fetched = loader.fetch(record)
    assert fetched.data == photos["coffee.png"]
    assert fetched.identity.startswith(f"s3://{BUCKET}/coffee.png#")
    assert loader.identify(record) == fetched.identity  # HEAD only: same identity, no body read
    assert loader.decode(record, fetched).shape == (400, 600, 3)

    # a new version of the object is a new identity
    s3 = boto3.client("s3")
    s3.put_object(Bucket=BUCKET, Key="copy/coffee.png", Body=photos["coffee.png"])
    copy = Record(1, ImageSource(bucket=BUCKET, key="copy/coffee.png"), {})
    before = loader.identify(copy)
    s3.put_object(Bucket=BUCKET, Key="copy/coffee.png", Body=photos["astronaut.png"])
    assert loader.identify(copy) != before

    # inline bytes: a content hash, the same for the same bytes wherever they come from
    inline = Record(2, ImageSource(data=photos["coffee.png"]), {})
    assert loader.identify(inline) == loader.fetch(inline).identity
    assert loader.identify(inline).startswith("sha256:")

    with pytest.raises(InferenceError) as caught:
        loader.identify(Record(3, ImageSource(bucket=BUCKET, key="missing.png"), {}))
    assert caught.value.status_code == 404 and caught.value.message.startswith("record 3:")
