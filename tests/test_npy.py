"""smvision.npy: .npy bytes read in place, base64 through pybase64 or the standard library."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest

from smvision import npy
from smvision.errors import InferenceError


def npy_of(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=True)
    return buffer.getvalue()


@pytest.mark.parametrize(
    "array",
    [
        np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4),
        np.linspace(-1, 1, 64, dtype=np.float16).reshape(1, 4, 4, 4),
        np.asfortranarray(np.arange(12, dtype=np.float64).reshape(3, 4)),
        np.array(3.5, dtype=np.float32),
        np.zeros((0, 5), dtype=np.int16),
    ],
)
def test_load_npy_equals_numpy(array: np.ndarray) -> None:
    data = npy_of(array)
    loaded = npy.load_npy(data, "x")
    expected = np.load(io.BytesIO(data))
    assert loaded.shape == expected.shape and loaded.dtype == expected.dtype
    np.testing.assert_array_equal(loaded, expected)
    np.testing.assert_array_equal(npy.load_npy(memoryview(data), "x"), expected)


@pytest.mark.parametrize(
    "data, message",
    [
        (npy_of(np.zeros((4, 4), np.float32))[:-8], "is not a .npy array"),  # truncated
        (npy_of(np.array([{"a": 1}], dtype=object)), "is not a .npy array"),  # would need pickle
        (b"\x93NUMPY\x01", "is not a .npy array"),
        (b"hello", "is not a .npy array"),
    ],
)
def test_load_npy_refuses_what_is_not_a_plain_npy(data: bytes, message: str) -> None:
    with pytest.raises(InferenceError) as caught:
        npy.load_npy(data, "the embedding")
    assert caught.value.status_code == 400 and message in caught.value.message
    assert caught.value.message.startswith("the embedding")


@pytest.mark.parametrize("backend", ["pybase64", "stdlib"])
def test_base64_same_with_either_backend(monkeypatch: pytest.MonkeyPatch, backend: str) -> None:
    if backend == "stdlib":
        monkeypatch.setattr(npy, "_base64", base64)
    else:
        assert npy._base64.__name__ == "pybase64", "requirements.txt pins pybase64"
    array = np.random.default_rng(0).standard_normal((1, 8, 4, 4)).astype(np.float16)
    text = npy.npy_base64(array)
    assert text == base64.b64encode(npy.npy_bytes(array)).decode("ascii")
    np.testing.assert_array_equal(npy.load_npy_base64(text, "x"), array)
    for bad in ("not base64!", text[:-1] + "*", "Zm9v=Zm9v"):
        with pytest.raises(InferenceError, match="not valid base64"):
            npy.load_npy_base64(bad, "x")


def npy_header(shape: tuple, descr: str = "<f4") -> bytes:
    """A version 1.0 .npy header claiming `shape`, whatever data follows it."""
    text = f"{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape!r}, }}"
    text += " " * (127 - 10 - len(text)) + "\n"
    return b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text.encode("latin-1")


@pytest.mark.parametrize(
    "data, words",
    [
        # 2**64 elements: their count in int64 wraps to 0
        (npy_header((4294967296, 4294967296)) + bytes(64), "(4294967296, 4294967296)"),
        (npy_header((2**62, 4)) + bytes(64), "needs 73786976294838206464 bytes"),
        (npy_header((1, 256, 64, -64)) + bytes(64), "negative"),
        (npy_header((1, 256, 64, 64)) + bytes(1000), "holds 1000 bytes of data"),  # too few bytes
        (npy_header((1, 2)) + bytes(64), "holds 64 bytes of data"),  # more bytes than the shape needs
        (npy_header((2, 3), "<f8") + bytes(24), "needs 48 bytes"),
    ],
)
def test_load_npy_refuses_a_header_its_data_does_not_fit(data: bytes, words: str) -> None:
    """A header whose shape is negative, overflows, or does not match the bytes present is
    a 400 naming the field, never a 500 (numpy's reshape raised outside the checks)."""
    for view in (data, memoryview(data)):
        with pytest.raises(InferenceError) as caught:
            npy.load_npy(view, "record 0: 'image_embedding'")
        assert caught.value.status_code == 400, caught.value
        assert caught.value.message.startswith("record 0: 'image_embedding' is not a .npy array")
        assert words in caught.value.message, caught.value.message
