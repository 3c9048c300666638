"""Request -> records: one record per CSV line, JSON element, JSON line or raw image.

A record is an image source (an S3 object, or inline bytes) plus the caller's
parameters for it. Parameters are checked by the model kind, which knows their names;
so is whether a record must name an image at all (sam-decode's records carry an image
embedding as a parameter instead). PARSERS is every parser by media type; each kind's
row (smvision.kinds) picks those it takes, and the most records a request may hold comes
from the settings the model was loaded with.
"""

from __future__ import annotations

import base64
import binascii
import csv
import io
import json
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Mapping

from smvision.errors import InferenceError, bad_request, too_large
from smvision.media import CSV, IMAGE_TYPES, JSON, JSONLINES, NPZ, MediaTable, media_type  # noqa: F401 (media_type: re-export)
from smvision.quoting import quote

#: JSON fields that name the image; every other field is a parameter.
SOURCE_FIELDS = ("bucket", "key", "s3_uri", "image")

#: Records one request may hold: sized so a full request fits the 60 s timeout (a D0 on
#: two CPU cores does about 7 images/s); raise it with SAGEMAKER_MODEL_SERVER_TIMEOUT.
MAX_RECORDS_ENV = "SMVISION_MAX_RECORDS"
DEFAULT_MAX_RECORDS = 256


@dataclass(frozen=True)
class ImageSource:
    """Where a record's image comes from: an S3 object or inline bytes."""

    bucket: str | None = None
    key: str | None = None
    data: bytes | None = field(default=None, repr=False)

    @property
    def is_s3(self) -> bool:
        return self.data is None

    def describe(self) -> str:
        """The source as users wrote it: s3://bucket/key, or 'inline image'."""
        return f"s3://{self.bucket}/{self.key}" if self.is_s3 else "inline image"


@dataclass(frozen=True)
class Record:
    """One image to process and the caller's parameters for it."""

    index: int
    source: ImageSource | None  # None: the record names no image (its kind may not need one)
    params: Mapping[str, Any]

    def label(self) -> str:
        """How error messages name this record (the caller's reference quoted)."""
        if self.source is None:
            return f"record {self.index}"
        source = self.source.describe()
        return f"record {self.index} ({quote(source) if self.source.is_s3 else source})"


@dataclass(frozen=True)
class Request:
    """The records of one request, and whether the caller sent a list of them.

    A JSON array, CSV lines or JSON lines are list-shaped and get a list back, even
    with a single record; one JSON object or one raw image gets one result back.
    """

    records: list[Record]
    is_list: bool


def parse_request(body: bytes | str, content_type: str | None, max_records: int = DEFAULT_MAX_RECORDS) -> Request:
    """Turn a request body of any record format (PARSERS) into records, or raise a
    400/413/415 InferenceError. A served model parses with its kind's own table instead
    (smvision.kinds.parse_for)."""
    return ALL_RECORDS.parse(body, content_type, max_records)


def parse_image_body(body: bytes | str, kind: str, max_records: int) -> Request:
    """A raw image body: one record with inline bytes."""
    data = body.encode("latin-1") if isinstance(body, str) else bytes(body)
    if not data:
        raise bad_request("the request body is empty; send the image bytes")
    return Request([Record(0, ImageSource(data=data), {})], is_list=False)


def parse_csv_body(body: bytes | str, kind: str, max_records: int) -> Request:
    """CSV: one S3 reference per line (the first column)."""
    records = [_csv_record(i, row) for i, row in enumerate(_capped(_csv_rows(_text(body)), max_records))]
    return _request(records, True)


def parse_jsonlines_body(body: bytes | str, kind: str, max_records: int) -> Request:
    """JSON lines: one record object per line."""
    lines = _capped(_lines(_text(body)), max_records)
    records = [_json_record(i, _load_json(line, f"line {i + 1}")) for i, line in enumerate(lines)]
    return _request(records, True)


def parse_json_body(body: bytes | str, kind: str, max_records: int) -> Request:
    """JSON: one record object, or an array of them."""
    document = _load_json(_text(body), "the body")
    is_list = isinstance(document, list)
    items = document if is_list else [document]
    records = [_json_record(i, item) for i, item in enumerate(_capped(items, max_records))]
    return _request(records, is_list)


def parse_npz_body(body: bytes | str, kind: str, max_records: int) -> Request:
    """An .npz body (numpy.savez): one record whose parameters are its arrays, by name
    (smvision.npz: no pickles, no zip bombs)."""
    from smvision.npz import read_npz

    data = body.encode("latin-1") if isinstance(body, str) else bytes(body)
    return Request([Record(0, None, read_npz(data))], is_list=False)


def _request(records: list[Record], is_list: bool) -> Request:
    if not records:
        raise bad_request("the request holds no records")
    return Request(records, is_list=is_list)


#: Content-Type -> parser, for every record format (README, "Requests"); each kind's row
#: picks the ones it takes
PARSERS = {
    JSON: parse_json_body,
    JSONLINES: parse_jsonlines_body,
    CSV: parse_csv_body,
    **{kind: parse_image_body for kind in IMAGE_TYPES},
    NPZ: parse_npz_body,
}
ALL_RECORDS = MediaTable(parsers=PARSERS)


def require_image(record: Record) -> ImageSource:
    """The record's image source, or a 400 saying how to name one."""
    if record.source is None:
        raise bad_request(
            f"record {record.index} names no image: give 'bucket' and 'key', 's3_uri', or 'image' (base64)"
        )
    return record.source


def _capped(items: Iterable[Any], limit: int) -> Iterator[Any]:
    """The items, or a 413 naming the setting once there are more than limit of them
    (found before the rest are parsed)."""
    for count, item in enumerate(items):
        if count == limit:
            raise too_large(
                f"the request holds more than {limit:,} records, the most one request may hold "
                f"({MAX_RECORDS_ENV}); split it into smaller requests"
            )
        yield item


def parse_s3_reference(text: str) -> tuple[str, str]:
    """'bucket/key' or 's3://bucket/key' -> (bucket, key); 400 if either part is missing."""
    ref = text.strip()
    if ref.startswith("s3://"):
        ref = ref[len("s3://") :]
    bucket, sep, key = ref.partition("/")
    if not sep or not bucket or not key:
        raise bad_request(f"{quote(text)} is not an S3 reference; write bucket/key or s3://bucket/key")
    return bucket, key


def _text(body: bytes | str) -> str:
    if isinstance(body, str):
        return body.removeprefix("\ufeff")
    try:
        return bytes(body).decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise bad_request(f"the body is not valid UTF-8 text (byte {exc.start})") from None


def _lines(text: str) -> Iterator[str]:
    return (line.strip() for line in text.splitlines() if line.strip())


def _csv_rows(text: str) -> Iterator[list[str]]:
    """Non-blank CSV rows, read by the csv module (quoted fields may hold commas)."""
    try:
        for row in csv.reader(io.StringIO(text)):
            if any(cell.strip() for cell in row):
                yield row
    except csv.Error as exc:
        raise bad_request(f"the body is not valid CSV: {quote(str(exc))}") from None


def _load_json(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise bad_request(f"{where} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except (ValueError, RecursionError) as exc:  # nesting too deep, an integer too long
        raise bad_request(f"{where} is not JSON this server accepts: {type(exc).__name__}: {quote(str(exc))}") from None


def _csv_record(index: int, row: list[str]) -> Record:
    ref = row[0].strip() if row else ""
    try:
        bucket, key = parse_s3_reference(ref)
    except InferenceError as exc:
        raise bad_request(f"CSV line {index + 1}: {exc.message}") from None
    return Record(index, ImageSource(bucket=bucket, key=key), {})


def _json_record(index: int, item: Any) -> Record:
    where = f"record {index}"
    if not isinstance(item, dict):
        raise bad_request(f"{where} must be a JSON object, got {type(item).__name__}")
    params = {name: value for name, value in item.items() if name not in SOURCE_FIELDS}
    if "image" in item:
        if any(name in item for name in ("bucket", "key", "s3_uri")):
            raise bad_request(f"{where}: give either 'image' or an S3 reference, not both")
        return Record(index, ImageSource(data=_base64(item["image"], where)), params)
    if "s3_uri" in item:
        uri = item["s3_uri"]
        if not isinstance(uri, str) or not uri.startswith("s3://") or not _is_utf8(uri):
            raise bad_request(f"{where}: 's3_uri' must be a string like s3://bucket/key")
        bucket, key = parse_s3_reference(uri)
        return Record(index, ImageSource(bucket=bucket, key=key), params)
    bucket, key = item.get("bucket"), item.get("key")
    if bucket is None and key is None:
        return Record(index, None, params)
    for name, value in (("bucket", bucket), ("key", key)):
        if not isinstance(value, str) or not value.strip():
            raise bad_request(f"{where}: '{name}' must be a non-empty string")
        if not _is_utf8(value):
            raise bad_request(f"{where}: '{name}' is not valid Unicode text (a lone surrogate?)")
    return Record(index, ImageSource(bucket=bucket.strip(), key=key), params)


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _base64(value: Any, where: str) -> bytes:
    if not isinstance(value, str) or not value:
        raise bad_request(f"{where}: 'image' must be a base64 string")
    if value.startswith("data:") and "," in value:  # a data URL from a browser
        value = value.split(",", 1)[1]
    try:
        data = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise bad_request(f"{where}: 'image' is not valid base64") from None
    if not data:
        raise bad_request(f"{where}: 'image' decodes to no bytes")
    return data
