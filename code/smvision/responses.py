"""Results -> response body for the caller's Accept type.

ENCODERS is every encoder by media type (smvision.media); each kind's row (smvision.kinds)
picks those it answers. In JSON, a numpy array in a result (a SAM embedding, a mask as
`npy`, low-res logits) is written as base64 of its .npy bytes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from smvision.errors import InferenceError
from smvision.media import JSON, JSONLINES, NPY
from smvision.npy import npy_base64, npy_bytes


@dataclass(frozen=True)
class Results:
    """One result per record, in order, and whether the request was list-shaped.

    A JSON array, CSV lines or JSON lines are list-shaped and get a list back, even with a
    single record; one JSON object or one raw image gets one result back.
    """

    items: Sequence[dict[str, Any]]
    is_list: bool


def encode_json(results: Results) -> bytes:
    """JSON: an array for list-shaped requests, else one object."""
    document: Any = list(results.items) if results.is_list else results.items[0]
    return _dumps(document).encode("utf-8")


def encode_jsonlines(results: Results) -> bytes:
    """JSON lines: one line per record."""
    return "".join(_dumps(item) + "\n" for item in results.items).encode("utf-8")


def _dumps(document: Any) -> str:
    """Compact JSON. A number that is not finite is a ValueError (a 500: our bug, with its
    traceback in the log), never the bare Infinity / NaN Python's json would write, which
    no JSON reader takes."""
    return json.dumps(document, separators=(",", ":"), default=_json_value, allow_nan=False)


def _json_value(value: Any) -> Any:
    """What json cannot write itself: arrays as base64 .npy, numpy scalars as numbers."""
    if isinstance(value, np.ndarray):
        return npy_base64(value)
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def encode_npy(results: Results) -> bytes:
    """application/x-npy: the .npy bytes of the one record's `embedding` (sam-encode)."""
    if len(results.items) != 1:
        raise InferenceError(
            406, f"application/x-npy answers one record; this request has {len(results.items)}: accept application/json"
        )
    embedding = results.items[0].get("embedding")
    if embedding is None:
        raise InferenceError(406, "the embedding was written to output_s3_uri: accept application/json for its URI")
    return npy_bytes(embedding)


#: Accept type -> encoder, for every answer format; each kind's row picks the ones it answers
ENCODERS = {JSON: encode_json, JSONLINES: encode_jsonlines, NPY: encode_npy}
