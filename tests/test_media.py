"""The media-type table: parsers and encoders by type, supported lists derived from it."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest

from smvision.errors import InferenceError
from smvision.kinds import KINDS
from smvision.media import NPY, MediaTable, canonical, media_type
from smvision.responses import Results

#: what the image kinds take and every kind answers (EfficientDet's row)
BASE_MEDIA = KINDS["efficientdet"].media


def test_media_type_and_aliases():
    assert media_type("Application/JSON; charset=utf-8") == "application/json"
    assert canonical("application/x-jsonlines") == "application/jsonlines"
    assert canonical(None) == ""


def test_supported_lists_come_from_the_table():
    assert BASE_MEDIA.content_types == [
        "application/json", "application/jsonlines", "text/csv",
        "image/jpeg", "image/png", "image/tiff", "application/x-image",
        "application/jsonl", "application/x-jsonlines",
    ]
    assert BASE_MEDIA.accepts == ["application/json", "application/jsonlines", "application/jsonl", "application/x-jsonlines"]


def test_unknown_types_are_415_and_406_naming_what_the_table_holds():
    narrow = BASE_MEDIA.narrow(content_types=["application/json"])
    with pytest.raises(InferenceError) as caught:
        narrow.parse("a/b.jpg", "text/csv", 256)
    assert caught.value.status_code == 415 and "use one of: application/json" in caught.value.message
    with pytest.raises(InferenceError) as caught:
        BASE_MEDIA.encode(Results([{}], False), "application/x-npy")
    assert caught.value.status_code == 406 and "application/jsonlines" in caught.value.message


def test_a_kind_extends_the_table_with_its_own_encoder():
    def one_npy(results: Results) -> bytes:
        buffer = io.BytesIO()
        np.save(buffer, results.items[0]["array"])
        return buffer.getvalue()

    table = BASE_MEDIA.extend(encoders={NPY: one_npy})
    assert NPY in table.accepts and NPY not in BASE_MEDIA.accepts  # the base is untouched
    results = Results([{"array": np.arange(3, dtype=np.float16)}], False)
    body, kind = table.encode(results, "application/x-npy, application/json")
    assert kind == NPY and np.load(io.BytesIO(body)).tolist() == [0, 1, 2]
    # JSON carries the same array as base64 .npy
    body, kind = table.encode(results, "*/*")
    array = np.load(io.BytesIO(base64.b64decode(json.loads(body)["array"])))
    assert kind == "application/json" and array.dtype == np.float16 and array.tolist() == [0, 1, 2]


def test_default_accept_is_the_tables():
    table = MediaTable(encoders={NPY: lambda r: b"x"}, default_accept=NPY)
    assert table.choose_accept(None) == NPY and table.choose_accept("*/*") == NPY
