"""Request bodies -> records, for every content type, and the 400/415 a user sees."""

from __future__ import annotations

import base64
import json

import pytest

from smvision.errors import InferenceError
from smvision.records import parse_request


def statuses(body, content_type):
    with pytest.raises(InferenceError) as caught:
        parse_request(body, content_type)
    return caught.value.status_code, caught.value.message


def test_csv_lines_in_order_with_or_without_scheme():
    request = parse_request("b1/a.jpg\ns3://b2/dir/c.png\n\n  b3/x y.jpg  \n", "text/csv")
    assert [(r.source.bucket, r.source.key) for r in request.records] == [
        ("b1", "a.jpg"),
        ("b2", "dir/c.png"),
        ("b3", "x y.jpg"),
    ]
    assert [r.index for r in request.records] == [0, 1, 2]
    assert request.is_list


def test_csv_bytes_with_charset_and_bom():
    request = parse_request("\ufeffbucket/key.jpg\r\n".encode(), "text/csv; charset=utf-8")
    assert request.records[0].source.describe() == "s3://bucket/key.jpg"


def test_json_object_is_one_record_with_params():
    request = parse_request(json.dumps({"bucket": "b", "key": "k.jpg", "pred_threshold": 0.5}), "application/json")
    assert not request.is_list
    (record,) = request.records
    assert record.source.describe() == "s3://b/k.jpg"
    assert record.params == {"pred_threshold": 0.5}


def test_json_array_s3_uri_and_base64():
    image = base64.b64encode(b"\x89PNG fake").decode()
    body = json.dumps([{"s3_uri": "s3://b/one.jpg"}, {"image": image, "iou_threshold": 0.3}])
    request = parse_request(body.encode(), "application/json")
    assert request.is_list
    assert request.records[0].source.describe() == "s3://b/one.jpg"
    assert request.records[1].source.data == b"\x89PNG fake"
    assert request.records[1].params == {"iou_threshold": 0.3}


def test_jsonlines():
    body = '{"bucket": "b", "key": "1.jpg"}\n\n{"s3_uri": "s3://b/2.jpg", "pred_threshold": 0.9}\n'
    request = parse_request(body, "application/jsonlines")
    assert [r.source.key for r in request.records] == ["1.jpg", "2.jpg"]
    assert request.records[1].params == {"pred_threshold": 0.9}


@pytest.mark.parametrize("content_type", ["image/jpeg", "image/png", "image/tiff", "application/x-image"])
def test_raw_image_is_one_record(content_type):
    request = parse_request(b"\xff\xd8\xff bytes", content_type)
    assert request.records[0].source.data == b"\xff\xd8\xff bytes"
    assert not request.is_list


@pytest.mark.parametrize(
    "body, content_type, words",
    [
        ("{not json", "application/json", "not valid JSON"),
        ('{"bucket": "b"}', "application/json", "'key' must be a non-empty string"),
        ('{"key": "k"}', "application/json", "'bucket' must be a non-empty string"),
        ("[1, 2]", "application/json", "must be a JSON object"),
        ("[]", "application/json", "no records"),
        ('{"s3_uri": "b/k"}', "application/json", "s3://bucket/key"),
        ('{"image": "***"}', "application/json", "not valid base64"),
        ('{"image": "aGk=", "bucket": "b", "key": "k"}', "application/json", "not both"),
        ("just-a-bucket\n", "text/csv", "CSV line 1"),
        ("", "text/csv", "no records"),
        ('{"bucket": "b", "key": "k"}\n{oops\n', "application/jsonlines", "line 2 is not valid JSON"),
        (b"\xff\xfe\xfa", "text/csv", "not valid UTF-8"),
        (b"", "image/jpeg", "empty"),
    ],
)
def test_bad_bodies_are_400_with_a_reason(body, content_type, words):
    status, message = statuses(body, content_type)
    assert status == 400
    assert words in message


@pytest.mark.parametrize("content_type", ["text/plain", "application/xml", None, "image/gif"])
def test_unsupported_content_type_is_415(content_type):
    status, message = statuses("b/k", content_type)
    assert status == 415
    assert "application/json" in message


@pytest.mark.parametrize("body", ["[" * 100_000, '{"bucket": "b", "key": "k", "n": ' + "1" * 5000 + "}"])
def test_hostile_json_is_400_not_500(body):
    assert statuses(body, "application/json")[0] == 400
    assert statuses(body, "application/jsonlines")[0] == 400


def test_lone_surrogate_in_key_is_400():
    status, message = statuses('{"bucket": "b", "key": "\\ud800"}', "application/json")
    assert status == 400 and "'key'" in message


def test_bom_is_ignored_on_text_bodies_too():
    assert parse_request("\ufeffbucket/k.jpg\n", "text/csv").records[0].source.bucket == "bucket"
    assert parse_request('\ufeff{"bucket": "b", "key": "k"}', "application/json").records[0].source.key == "k"


def test_a_record_without_an_image_is_the_kinds_to_refuse():
    # sam-decode's records carry an image_embedding instead of an image: parsing keeps
    # them; kinds that need an image refuse them with the same words as before.
    from smvision.records import require_image

    (record,) = parse_request('{"pred_threshold": 0.5}', "application/json").records
    assert record.source is None and record.params == {"pred_threshold": 0.5}
    with pytest.raises(InferenceError) as caught:
        require_image(record)
    assert caught.value.status_code == 400 and "names no image" in caught.value.message
