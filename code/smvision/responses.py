"""Results -> response body for the caller's Accept type."""

from __future__ import annotations

import json
from typing import Any, Sequence

from smvision.errors import unsupported_accept
from smvision.records import JSONLINES_TYPES

JSON = "application/json"
JSONLINES = "application/jsonlines"
SUPPORTED_ACCEPTS = [JSON, *JSONLINES_TYPES]


def choose_accept(accept: str | None) -> str:
    """The first supported type in an Accept header ('*/*' and none mean JSON); else 406."""
    if not accept:
        return JSON
    for part in accept.split(","):
        kind = part.split(";", 1)[0].strip().lower()
        if kind in ("*/*", "application/*", JSON):
            return JSON
        if kind in JSONLINES_TYPES:
            return JSONLINES
    raise unsupported_accept(accept, SUPPORTED_ACCEPTS)


def encode_results(results: Sequence[dict[str, Any]], is_list: bool, accept: str | None) -> tuple[bytes, str]:
    """JSON: an array for list-shaped requests, else one object. JSON lines: one line each."""
    kind = choose_accept(accept)
    if kind == JSONLINES:
        body = "".join(json.dumps(result, separators=(",", ":")) + "\n" for result in results)
        return body.encode("utf-8"), JSONLINES
    document: Any = list(results) if is_list else results[0]
    return json.dumps(document, separators=(",", ":")).encode("utf-8"), JSON
