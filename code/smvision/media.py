"""Media types: one table of request parsers and response encoders.

Shaped like the SageMaker inference toolkit's content_types / decoder / encoder maps: a
media type names the function that parses a body of that type (into records) or encodes
results as that type, and the supported lists a 415 or 406 names are derived from the
table, never kept beside it. records.py holds every parser (PARSERS) and responses.py
every encoder (ENCODERS); each model kind's row (smvision.kinds) picks the types it takes
and answers, e.g. sam-encode also answers `application/x-npy`, sam-decode takes JSON and
`application/x-npz` but no images.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

from smvision.errors import unsupported_accept, unsupported_content_type

JSON = "application/json"
JSONLINES = "application/jsonlines"
CSV = "text/csv"
NPY = "application/x-npy"
NPZ = "application/x-npz"  # numpy.savez: named arrays in one binary body (sam-decode)
JPEG = "image/jpeg"
PNG = "image/png"
TIFF = "image/tiff"
X_IMAGE = "application/x-image"
IMAGE_TYPES = (JPEG, PNG, TIFF, X_IMAGE)
#: the bodies that name images: what every image-taking kind takes
IMAGE_RECORDS = (JSON, JSONLINES, CSV, *IMAGE_TYPES)

#: other names clients use for the same type -> the name this table knows it by
ALIASES = {
    "application/jsonl": JSONLINES,
    "application/x-jsonlines": JSONLINES,
}
#: Accept values that leave the choice to us (the table's default_accept)
WILDCARDS = ("*/*", "application/*")

#: parser(body, media type, most records) -> parsed request; body is str for text types
#: under the toolkit
Parser = Callable[[Any, str, int], Any]
#: encoder(prediction) -> response body
Encoder = Callable[[Any], bytes]


def media_type(content_type: str | None) -> str:
    """'Application/JSON; charset=utf-8' -> 'application/json' (no parameters, lower case)."""
    return (content_type or "").split(";", 1)[0].strip().lower()


def canonical(content_type: str | None) -> str:
    """media_type() with aliases resolved: 'application/jsonl' -> 'application/jsonlines'."""
    kind = media_type(content_type)
    return ALIASES.get(kind, kind)


@dataclass(frozen=True)
class MediaTable:
    """What a model kind takes (parsers) and answers (encoders), keyed by media type."""

    parsers: Mapping[str, Parser] = field(default_factory=dict)
    encoders: Mapping[str, Encoder] = field(default_factory=dict)
    default_accept: str = JSON

    def extend(self, parsers: Mapping[str, Parser] | None = None, encoders: Mapping[str, Encoder] | None = None) -> "MediaTable":
        """A new table with these entries added (or replacing same-named ones)."""
        return MediaTable({**self.parsers, **(parsers or {})}, {**self.encoders, **(encoders or {})}, self.default_accept)

    def narrow(self, content_types: Iterable[str] | None = None, accepts: Iterable[str] | None = None) -> "MediaTable":
        """A new table keeping only these content types / accept types (None: keep all)."""
        parsers = self.parsers if content_types is None else {k: self.parsers[k] for k in content_types}
        encoders = self.encoders if accepts is None else {k: self.encoders[k] for k in accepts}
        return MediaTable(parsers, encoders, self.default_accept)

    @property
    def content_types(self) -> list[str]:
        """Every Content-Type this table parses, aliases included (for 415 messages)."""
        return _with_aliases(self.parsers)

    @property
    def accepts(self) -> list[str]:
        """Every Accept type this table encodes, aliases included (for 406 messages)."""
        return _with_aliases(self.encoders)

    def parser(self, content_type: str | None) -> Parser:
        """The parser for a Content-Type, or a 415 naming the supported types."""
        parser = self.parsers.get(canonical(content_type))
        if parser is None:
            raise unsupported_content_type(content_type or "(none)", self.content_types)
        return parser

    def parse(self, body: Any, content_type: str | None, max_records: int) -> Any:
        """Parse body with the parser for its Content-Type (415 if there is none); more than
        max_records records is a 413."""
        return self.parser(content_type)(body, canonical(content_type), max_records)

    def choose_accept(self, accept: str | None) -> str:
        """The first type in an Accept header this table encodes ('*/*' and none mean the
        default); else a 406 naming the supported types."""
        if not accept or not accept.strip():
            return self.default_accept
        for part in accept.split(","):
            kind = canonical(part)
            if kind in WILDCARDS:
                return self.default_accept
            if kind in self.encoders:
                return kind
        raise unsupported_accept(accept, self.accepts)

    def encode(self, prediction: Any, accept: str | None) -> tuple[bytes, str]:
        """(body, content type) of prediction for the Accept header."""
        kind = self.choose_accept(accept)
        return self.encoders[kind](prediction), kind


def _with_aliases(table: Mapping[str, Any]) -> list[str]:
    names = list(table)
    return names + [alias for alias, target in ALIASES.items() if target in table]
