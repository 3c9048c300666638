"""NumPy arrays as .npy bytes (application/x-npy), raw or base64 inside JSON."""

from __future__ import annotations

import base64
import binascii
import io
from typing import Any

import numpy as np

from smvision.errors import bad_request


def npy_bytes(array: np.ndarray) -> bytes:
    """The .npy file bytes of an array (what np.load reads back)."""
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def npy_base64(array: np.ndarray) -> str:
    """Base64 (standard alphabet) of the array's .npy bytes, for JSON."""
    return base64.b64encode(npy_bytes(array)).decode("ascii")


def load_npy(data: bytes, where: str) -> np.ndarray:
    """.npy bytes -> array; a 400 naming `where` for anything that is not a plain .npy."""
    try:
        return np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise bad_request(f"{where} is not a .npy array: {exc}"[:300]) from None


def load_npy_base64(value: Any, where: str) -> np.ndarray:
    """A base64 string of .npy bytes -> array; 400s that name `where`."""
    if not isinstance(value, str) or not value:
        raise bad_request(f"{where} must be a base64 string of .npy bytes")
    try:
        data = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise bad_request(f"{where} is not valid base64") from None
    return load_npy(data, where)
