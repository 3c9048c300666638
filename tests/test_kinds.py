"""The kind registry: each kind takes and answers its own media types, from its row."""

from __future__ import annotations

import io

import numpy as np
import pytest

from smvision.container.handler import Handler
from smvision.errors import InferenceError
from smvision.kinds import KINDS


def npz_body() -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, image_embedding=np.zeros((1, 256, 64, 64), np.float32), original_size=np.array([4, 4]),
             points=np.array([[1, 1]]), labels=np.array([1]))
    return buffer.getvalue()


@pytest.fixture(scope="module")
def handlers(d0_model_dir, sam_model_dir):
    """kind -> the entry script loaded on that kind's archive, as `serve` runs it."""
    loaded = {}
    for kind, model_dir in (("efficientdet", d0_model_dir), ("sam-encode", sam_model_dir("sam-encode")),
                            ("sam", sam_model_dir("sam")), ("sam-decode", sam_model_dir("sam-decode"))):
        handler = Handler(str(model_dir))
        handler.load()
        loaded[kind] = handler
    return loaded


@pytest.mark.parametrize("kind", ["efficientdet", "sam-encode", "sam"])
def test_an_npz_body_is_415_listing_what_the_kind_takes(handlers, kind):
    with pytest.raises(InferenceError) as caught:
        handlers[kind].invoke(npz_body(), "application/x-npz", "application/json")
    error = caught.value
    assert error.status_code == 415, error.message
    listed = error.message.split("use one of:", 1)[1]
    for media_type in ("application/json", "application/jsonlines", "text/csv", "image/jpeg", "image/png"):
        assert media_type in listed
    assert "application/x-npz" not in listed


def test_sam_decode_takes_npz_and_refuses_images_listing_its_own_types(handlers):
    handler = handlers["sam-decode"]
    body, content_type = handler.invoke(npz_body(), "application/x-npz", "application/json")
    assert content_type == "application/json" and b'"masks"' in body
    with pytest.raises(InferenceError) as caught:
        handler.invoke(b"\xff\xd8\xff", "image/jpeg", "application/json")
    assert caught.value.status_code == 415
    listed = caught.value.message.split("use one of:", 1)[1]
    assert "application/x-npz" in listed and "application/json" in listed and "image/jpeg" not in listed


def test_every_row_is_complete_and_its_module_loads_it():
    import importlib

    for name, kind in KINDS.items():
        assert kind.name == name and kind.takes and kind.answers and kind.roles and kind.requirements and kind.help
        assert kind.media.content_types[: len(kind.takes)] == list(kind.takes)
        module = importlib.import_module(kind.module)
        assert callable(module.load)
