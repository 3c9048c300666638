"""Image bytes -> RGB arrays: EXIF orientation applied, pixel count limited.

The ImageLoader fetches a batch of records' images concurrently (S3 reads release the
GIL) and decodes them, naming the record in every error.
"""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator, Sequence

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from smvision import inflight
from smvision.errors import InferenceError, bad_request, too_large
from smvision.params import env_int
from smvision.records import Record
from smvision.s3 import S3Reader, allowed_buckets_from_env

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


class ImageLoader:
    """Fetches and decodes the images of a batch of records, concurrently."""

    def __init__(self, reader: S3Reader | None = None, max_pixels: int | None = None, threads: int = 8) -> None:
        self.reader = reader or S3Reader(allowed_buckets_from_env())
        self.max_pixels = max_pixels or env_int(MAX_PIXELS_ENV, DEFAULT_MAX_PIXELS, 1, 10**12)
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="smvision-images")

    def load(self, record: Record, request: inflight.Inflight | None = None) -> np.ndarray:
        """One record's image as HxWx3 uint8 RGB; errors name the record.

        request: the request it belongs to (fetch threads have none of their own): its
        deadline is checked first and bounds the S3 read; fetch and decode are timed."""
        request = request if request is not None else inflight.current()
        if request is not None:
            request.check(f"before {record.label()}")
        source = record.source
        data = source.data
        if data is None:
            try:
                with inflight.stage("fetch", request):
                    data = self.reader.read(source.bucket, source.key, request)
            except InferenceError as exc:
                raise InferenceError(exc.status_code, f"record {record.index}: {exc.message}") from None
        with inflight.stage("decode", request):
            return decode_image(data, record.label(), self.max_pixels)

    def batches(self, records: Sequence[Record], batch_size: int) -> Iterator[tuple[list[Record], list[np.ndarray]]]:
        """(records, images) in batches of batch_size, in order, fetching the next batch
        while the caller computes on the current one."""
        request = inflight.current()
        chunks = [list(records[i : i + batch_size]) for i in range(0, len(records), batch_size)]
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
