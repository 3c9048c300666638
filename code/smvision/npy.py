"""NumPy arrays as .npy bytes (application/x-npy), raw or base64 inside JSON.

Base64 goes through pybase64 (SIMD, about 10x the standard library on a 5.6 MB
embedding) when it is installed, else binascii: same answers, same errors. .npy bytes
are read in place (np.frombuffer after the header): no copy of the array data.
"""

from __future__ import annotations

import binascii
import io
import math
from typing import Any

import numpy as np

from smvision.errors import bad_request

try:  # pinned in requirements.txt; the standard library does the same, slower
    import pybase64 as _base64
except ImportError:  # pragma: no cover - exercised where pybase64 is missing
    import base64 as _base64


_HEADER_LIMIT = 1 << 20  # bytes of a .npy's start read for its header (numpy writes under 1 KiB)


def npy_bytes(array: np.ndarray) -> bytes:
    """The .npy file bytes of an array (what np.load reads back)."""
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def npy_base64(array: np.ndarray) -> str:
    """Base64 (standard alphabet) of the array's .npy bytes, for JSON."""
    return _base64.b64encode(npy_bytes(array)).decode("ascii")


def load_npy(data: bytes | bytearray | memoryview, where: str) -> np.ndarray:
    """.npy bytes -> array (read-only, a view of data: no copy); a 400 naming `where`
    for anything that is not a plain .npy (object arrays included: no pickles)."""
    fmt = np.lib.format
    # the header from a bytes object in place; from other buffers, a copy of its start only
    stream = io.BytesIO(data if isinstance(data, bytes) else bytes(memoryview(data)[:_HEADER_LIMIT]))
    try:
        version = fmt.read_magic(stream)
        if version not in ((1, 0), (2, 0)):  # 3.0 (utf-8 field names): numpy's own reader
            return np.load(io.BytesIO(data), allow_pickle=False)
        read_header = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
        shape, fortran_order, dtype = read_header(stream)
        if dtype.hasobject:
            raise ValueError("object arrays cannot be loaded (they would need pickle)")
        count = _element_count(shape, dtype, memoryview(data).nbytes - stream.tell())
        array = np.frombuffer(data, dtype=dtype, count=count, offset=stream.tell())
    except (ValueError, OSError, EOFError) as exc:
        raise bad_request(f"{where} is not a .npy array: {exc}"[:300]) from None
    return array.reshape(shape, order="F" if fortran_order else "C")


def _element_count(shape: tuple[int, ...], dtype: np.dtype, present: int) -> int:
    """The number of elements a header's shape holds, once its data is known to be exactly
    the bytes present; a ValueError saying why not (a negative dimension, or a shape whose
    size, computed exactly rather than in int64 where it could wrap, is not the data's)."""
    if any(dim < 0 for dim in shape):
        raise ValueError(f"its header's shape {shape} has a negative dimension")
    count = math.prod(shape)
    needed = count * dtype.itemsize
    if needed != present:
        raise ValueError(
            f"its header's shape {shape} of {dtype} needs {needed} bytes, but it holds {present} bytes of data"
        )
    return count


def load_npy_base64(value: Any, where: str) -> np.ndarray:
    """A base64 string of .npy bytes -> array; 400s that name `where`."""
    if not isinstance(value, str) or not value:
        raise bad_request(f"{where} must be a base64 string of .npy bytes")
    try:
        data = _base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise bad_request(f"{where} is not valid base64") from None
    return load_npy(data, where)
