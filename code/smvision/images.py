"""Image bytes -> RGB arrays: EXIF orientation applied, pixel count limited.

Fetching and decoding are separate steps. fetch() gives a record's bytes and their
identity (the S3 object and its ETag, or a content hash for inline bytes); identify()
gives the identity alone (an S3 HEAD, no body), so a cache keyed by it skips both
fetching and decoding on a hit. The ImageLoader fetches a batch of records' images
concurrently (S3 reads release the GIL) and decodes them, naming the record in every
error.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from smvision import inflight
from smvision.errors import InferenceError, bad_request, too_large
from smvision.records import ImageSource, Record, require_image
from smvision.s3 import S3Reader

MAX_PIXELS_ENV = "SMVISION_MAX_IMAGE_PIXELS"
DEFAULT_MAX_PIXELS = 50_000_000  # a 50-megapixel photo decodes to 150 MB of RGB

ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is an error, never grey pixels
Image.MAX_IMAGE_PIXELS = None  # our own limit (max_pixels) is checked from the header instead


def decode_image(data: bytes, where: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode image bytes to an HxWx3 uint8 RGB array, upright per its EXIF orientation.

    Raises a 400 for bytes that are not a complete image and a 413 for an image with
    more than max_pixels pixels (checked from the header, before decoding).
    """
    try:
        image = Image.open(io.BytesIO(data))
        width, height = image.size
        if width * height > max_pixels:
            raise too_large(f"{where} is {width}x{height} = {width * height:,} pixels; the limit is {max_pixels:,}")
        image.load()
        image = ImageOps.exif_transpose(image)
        if image.mode != "RGB":
            image = image.convert("RGB")
        return np.asarray(image)
    except InferenceError:
        raise
    except UnidentifiedImageError:
        raise bad_request(f"{where} is not an image this server can decode (JPEG, PNG, TIFF, ...)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise bad_request(f"{where} is a damaged or truncated image: {exc}") from None


@dataclass(frozen=True)
class FetchedImage:
    """A record's image bytes, not yet decoded, and what identifies them."""

    data: bytes = field(repr=False)
    identity: str  # s3://bucket/key#etag, or sha256:<hex> for inline bytes


def content_identity(data: bytes) -> str:
    """The identity of inline bytes: their sha256."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def s3_identity(bucket: str, key: str, etag: str) -> str:
    """The identity of an S3 object's current version: its URI and ETag."""
    return f"s3://{bucket}/{key}#{etag.strip(chr(34))}"


class ImageLoader:
    """Fetches and decodes the images of a batch of records, concurrently."""

    def __init__(self, reader: S3Reader | None = None, max_pixels: int = DEFAULT_MAX_PIXELS, threads: int = 8) -> None:
        self.reader = reader or S3Reader()
        self.max_pixels = max_pixels
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="smvision-images")

    def load(self, record: Record, request: inflight.Inflight | None = None) -> np.ndarray:
        """One record's image as HxWx3 uint8 RGB; errors name the record.

        request: the request it belongs to (fetch threads have none of their own): its
        deadline is checked first and bounds the S3 read; fetch and decode are timed."""
        request = request if request is not None else inflight.current()
        return self.decode(record, self.fetch(record, request), request)

    def fetch(self, record: Record, request: inflight.Inflight | None = None) -> FetchedImage:
        """The record's image bytes (read from S3, or inline) and their identity."""
        source = require_image(record)
        if source.data is not None:
            return FetchedImage(source.data, content_identity(source.data))
        request = request if request is not None else inflight.current()
        if request is not None:
            request.check(f"before {record.label()}")
        with _naming(record), inflight.stage("fetch", request):
            found = self.reader.get(source.bucket, source.key, request)
        return FetchedImage(found.data, s3_identity(source.bucket, source.key, found.etag))

    def identify(self, record: Record, request: inflight.Inflight | None = None) -> str:
        """The identity fetch() would give, without reading an S3 object's body (HEAD)."""
        source: ImageSource = require_image(record)
        if source.data is not None:
            return content_identity(source.data)
        with _naming(record), inflight.stage("fetch", request):
            return s3_identity(source.bucket, source.key, self.reader.etag(source.bucket, source.key, request))

    def decode(self, record: Record, fetched: FetchedImage, request: inflight.Inflight | None = None) -> np.ndarray:
        """Fetched bytes -> HxWx3 uint8 RGB (EXIF applied, pixels limited); errors name the record."""
        with inflight.stage("decode", request):
            return decode_image(fetched.data, record.label(), self.max_pixels)

    def batches(self, records: Sequence[Record], batch_size: int) -> Iterator[tuple[list[Record], list[np.ndarray]]]:
        """(records, images) in batches of batch_size, in order, fetching the next batch
        while the caller computes on the current one."""
        chunks = [list(records[i : i + batch_size]) for i in range(0, len(records), batch_size)]
        request = inflight.current()
        pending = [self._pool.submit(self.load, r, request) for r in chunks[0]] if chunks else []
        for number, chunk in enumerate(chunks):
            current = pending
            if number + 1 < len(chunks):
                pending = [self._pool.submit(self.load, r, request) for r in chunks[number + 1]]
            try:
                images = [future.result() for future in current]
            except BaseException:
                for future in pending:
                    future.cancel()
                raise
            yield chunk, images


@contextlib.contextmanager
def _naming(record: Record) -> Iterator[None]:
    """Prefix S3 errors with the record they concern."""
    try:
        yield
    except InferenceError as exc:
        raise InferenceError(exc.status_code, f"record {record.index}: {exc.message}") from None
