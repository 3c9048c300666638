"""Results -> response body for the caller's Accept type.

RESULT_ENCODERS is this module's part of the media table (smvision.media): JSON and JSON
lines, which every kind answers. In JSON, a numpy array in a result (a SAM embedding, a
mask as `npy`, low-res logits) is written as base64 of its .npy bytes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from smvision.media import JSON, JSONLINES, MediaTable
from smvision.npy import npy_base64


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


#: Accept type -> encoder: what every kind answers
RESULT_ENCODERS = {JSON: encode_json, JSONLINES: encode_jsonlines}
ANSWERS = MediaTable(encoders=RESULT_ENCODERS)
SUPPORTED_ACCEPTS = ANSWERS.accepts


def choose_accept(accept: str | None) -> str:
    """The first supported type in an Accept header ('*/*' and none mean JSON); else 406."""
    return ANSWERS.choose_accept(accept)


def encode_results(
    results: Sequence[dict[str, Any]], is_list: bool, accept: str | None, media: MediaTable = ANSWERS
) -> tuple[bytes, str]:
    """(body, content type) of results for the Accept type, with media's encoders."""
    return media.encode(Results(results, is_list), accept)
