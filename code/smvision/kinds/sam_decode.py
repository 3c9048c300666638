"""The sam-decode kind: an image embedding + prompts -> masks (ONNX Runtime, CPU).

A record (JSON, or one per JSON line) carries
  image_embedding  base64 of the .npy sam-encode answers ((1, 256, 64, 64), float32 or
                   float16), or an S3 reference to such a .npy: {"s3_uri": "s3://b/k.npy"}
                   or {"bucket": B, "key": K}
  original_size    [H, W] of the image the embedding came from (sam-encode answers it)
and the prompts of smvision.kinds.sam_prompts: points + labels, box, mask_input,
multimask_output, mask_format (rle | png | polygon | npy | geojson), return_logits;
for geojson, geotransform (+ crs) and simplify_tolerance.

Or one record as an .npz body (Content-Type application/x-npz, numpy.savez): the same
names as arrays, image_embedding the (1, 256, 64, 64) array itself; no base64, no JSON
to parse (about 20 ms less per call than base64 JSON on this 2-core CPU, under load).

Answer per record: {"masks": [...], "scores": [...], "mask_format", "original_size",
"low_res_logits": <base64 .npy (K, 256, 256)> when return_logits}; masks are in
original-image pixels, K = 3 with multimask_output (the default), else 1.

"mode": "everything" (no prompts; crop_n_layers 0: crops need the image) answers every
mask of the embedding's image instead, as SamAutomaticMaskGenerator does
(smvision.kinds.sam_everything).
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from smvision.artifacts import DECODER
from smvision.errors import InferenceError, bad_request, too_large
from smvision.images import MAX_PIXELS_ENV
from smvision.inflight import check_deadline, stage
from smvision.kinds.sam_everything import EVERYTHING_KEYS, Everything, EverythingRequest, is_everything, load_everything
from smvision.manifest import Manifest
from smvision.models.sam.build import EMBEDDING_SHAPE
from smvision.npy import load_npy, load_npy_base64
from smvision.params import check_known
from smvision.records import Record, Request, parse_s3_reference
from smvision.s3 import S3Reader
from smvision.settings import RuntimeSettings

log = logging.getLogger("smvision")

EMBEDDING_DTYPES = (np.float32, np.float16)


def parse_original_size(value: Any, where: str, max_pixels: int) -> tuple[int, int]:
    """[H, W] -> (H, W): two positive integers, at most max_pixels in all; else a 400."""
    if value is None:
        raise bad_request(f"{where}: 'original_size' [H, W] is missing (sam-encode answers it with the embedding)")
    if (
        not isinstance(value, (list, tuple))
        or len(value) != 2
        or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in value)
    ):
        raise bad_request(f"{where}: 'original_size' must be [H, W], two positive integers, got {value!r}"[:300])
    height, width = value
    if height * width > max_pixels:
        raise bad_request(f"{where}: 'original_size' {height}x{width} is over the limit of {max_pixels:,} pixels")
    return int(height), int(width)


def check_embedding(array: np.ndarray, where: str) -> np.ndarray:
    """A (1, 256, 64, 64) float32 / float16 array -> float32 (C-contiguous); else a 400."""
    if array.shape != EMBEDDING_SHAPE or array.dtype not in EMBEDDING_DTYPES:
        raise bad_request(
            f"{where}: 'image_embedding' must be a (1, 256, 64, 64) float32 or float16 array "
            f"(what sam-encode answers), got shape {tuple(array.shape)} dtype {array.dtype}"
        )
    array = np.ascontiguousarray(array, dtype=np.float32)
    if not np.isfinite(array).all():
        raise bad_request(f"{where}: 'image_embedding' holds NaN or infinite values")
    return array


def answer(
    result: Any, prompts: Any, original_size: tuple[int, int], image_georef: Any = None, where: str = "record"
) -> dict[str, Any]:
    """One record's answer (README, "sam-decode"): masks in the asked format, scores, and logits on request.

    mask_format "geojson": a FeatureCollection, in map coordinates when the request gives
    a geotransform or the image carried one (image_georef, a smvision.geo.Georef)."""
    from smvision.models.sam.masks import encode_masks

    scores = [round(float(s), 5) for s in result.scores]
    with stage("masks"):
        if prompts.mask_format == "geojson":
            masks = geojson_answer(result.masks, scores, prompts, image_georef, where, original_size)
        else:
            masks = encode_masks(result.masks, prompts.mask_format)
    out: dict[str, Any] = {
        "masks": masks,
        "scores": scores,
        "mask_format": prompts.mask_format,
        "original_size": list(original_size),
    }
    if prompts.return_logits:
        out["low_res_logits"] = np.ascontiguousarray(result.low_res_logits, dtype=np.float32)
    return out


def geojson_options(prompts: Any, image_georef: Any, where: str, size: tuple[int, int] | None = None) -> Any:
    """GeoJsonOptions for a record: the request's geotransform (and crs) over the image's
    own, which must map the corners of an image of size (H, W) to finite numbers (400)."""
    from smvision.geo import Georef, check_image_georef
    from smvision.models.sam.geojson import GeoJsonOptions

    georef = image_georef
    if prompts.geotransform is not None:
        georef = Georef(prompts.geotransform, prompts.crs)
    elif prompts.crs is not None:
        if georef is None:
            raise bad_request(
                f"{where}: 'crs' needs a 'geotransform' (six numbers, GDAL order) or a georeferenced GeoTIFF"
            )
        georef = Georef(georef.geotransform, prompts.crs)
    if georef is not None and prompts.geotransform is None and size is not None:
        check_image_georef(georef, size, where)
    return GeoJsonOptions(georef, prompts.simplify_tolerance)


def geojson_answer(
    masks: Any, scores: list[float], prompts: Any, image_georef: Any, where: str, size: tuple[int, int] | None = None
) -> dict[str, Any]:
    """The masks as a GeoJSON FeatureCollection, each Feature with its mask_index and score."""
    from smvision.models.sam.geojson import feature_collection
    from smvision.models.sam.masks import encode_masks

    options = geojson_options(prompts, image_georef, where, size)
    return feature_collection(encode_masks(masks, "geojson", options), [{"score": s} for s in scores], options)


class EmbeddingReader:
    """image_embedding values -> checked float32 arrays (inline base64 .npy, or from S3)."""

    def __init__(self, reader: S3Reader | None = None) -> None:
        self.reader = reader or S3Reader()

    def reference(self, value: Any, where: str) -> tuple[str, str] | None:
        """(bucket, key) for an S3 reference; None for inline base64 (or an .npz body's
        array); a 400 for anything else."""
        if isinstance(value, (str, np.ndarray)):
            return None
        if isinstance(value, Mapping):
            if set(value) == {"s3_uri"} and isinstance(value["s3_uri"], str) and value["s3_uri"].startswith("s3://"):
                return parse_s3_reference(value["s3_uri"])
            if set(value) == {"bucket", "key"} and all(isinstance(value[k], str) and value[k] for k in value):
                return value["bucket"], value["key"]
        raise bad_request(
            f"{where}: 'image_embedding' must be base64 .npy, {{\"s3_uri\": \"s3://bucket/key.npy\"}} "
            f"or {{\"bucket\": ..., \"key\": ...}}, got {type(value).__name__}"
        )

    def read(self, value: Any, where: str) -> np.ndarray:
        """The checked (1, 256, 64, 64) float32 embedding a record names."""
        location = self.reference(value, where)
        if location is None:
            array = value if isinstance(value, np.ndarray) else load_npy_base64(value, f"{where}: 'image_embedding'")
            return check_embedding(array, where)
        bucket, key = location
        try:
            data = self.reader.read(bucket, key)
        except InferenceError as exc:
            raise InferenceError(exc.status_code, f"{where}: {exc.message}") from None
        return check_embedding(load_npy(data, f"{where}: s3://{bucket}/{key}"), where)


class SamDecodeModel:
    """A loaded ONNX decoder and the reader of the embeddings records name."""

    kind = "sam-decode"

    def __init__(
        self,
        decoder: Any,
        embeddings: EmbeddingReader,
        settings: RuntimeSettings,
        threads: int = 8,
        everything: Everything | None = None,
    ) -> None:
        self.settings = settings
        self.max_pixels = settings.max_image_pixels
        self.decoder = decoder
        self.everything = everything
        self.embeddings = embeddings
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="smvision-embeddings")

    def predict(self, request: Request) -> list[dict[str, Any]]:
        """One result per record, in order; every record's prompts are checked before any
        embedding is read (S3 embeddings are read concurrently)."""
        from smvision.kinds.sam_prompts import PROMPT_KEYS

        checked = []
        for record in request.records:
            where = f"record {record.index}"
            if record.source is not None:
                raise bad_request(
                    f"{where}: sam-decode takes an 'image_embedding' (from sam-encode), not an image; "
                    "the sam kind takes images and prompts in one call"
                )
            everything = is_everything(record.params, where)
            keys = EVERYTHING_KEYS if everything else ("mode", *PROMPT_KEYS)
            check_known(record.params, ("image_embedding", "original_size", *keys), where)
            if record.params.get("image_embedding") is None:
                raise bad_request(f"{where}: 'image_embedding' is missing (base64 .npy, or an S3 reference to one)")
            self.embeddings.reference(record.params["image_embedding"], where)  # its shape, before any read
            if everything:
                checked.append((record, *self.everything_request(record)))
                continue
            size = parse_original_size(record.params.get("original_size"), where, self.max_pixels)
            prompts = self.prompts(record, size)
            if prompts.mask_format == "geojson":
                geojson_options(prompts, None, where)  # a crs without a geotransform: 400 before any read
            checked.append((record, size, prompts))
        with stage("fetch"):  # S3 reads concurrently on the pool; inline ones here (no thread hop)
            reads = {
                r.index: self._pool.submit(self.embeddings.read, r.params["image_embedding"], f"record {r.index}")
                for r, _, _ in checked
                if self.embeddings.reference(r.params["image_embedding"], f"record {r.index}") is not None
            }
            embeddings = [
                reads[r.index].result() if r.index in reads else self.embeddings.read(r.params["image_embedding"], f"record {r.index}")
                for r, _, _ in checked
            ]
        results = []
        for (record, size, prompts), embedding in zip(checked, embeddings):
            check_deadline(f"before decoding record {record.index}")
            if isinstance(prompts, EverythingRequest):
                results.append(self.decode_everything(record, size, prompts, embedding))
                continue
            with stage("mask_decoder"):
                result = self.decoder.decode(embedding, size, prompts)
            results.append(answer(result, prompts, size, where=f"record {record.index}"))
        return results

    def everything_request(self, record: Record) -> tuple[tuple[int, int], Any]:
        """(original_size, checked everything-mode request) of a record; the work is
        checked against the limits and the time left before any embedding is read."""
        where = f"record {record.index}"
        if self.everything is None:
            raise bad_request(f"{where}: this model was loaded without everything mode")
        request = self.everything.parse(record.params, where, has_image=False)
        size = parse_original_size(record.params.get("original_size"), where, 10**15)
        if size[0] * size[1] > self.max_pixels:
            raise too_large(
                f"{where}: 'original_size' {size[0]}x{size[1]} is over the limit of {self.max_pixels:,} pixels "
                f"({MAX_PIXELS_ENV})"
            )
        self.everything.check(request, size, where)
        return size, request

    def decode_everything(self, record: Record, size: tuple[int, int], request: Any, embedding: np.ndarray) -> dict[str, Any]:
        """Every mask of the embedding's image (SamAutomaticMaskGenerator, without crops)."""
        from smvision.models.sam.decoder import input_size

        return self.everything.run(request, size, lambda crop_box: (embedding, input_size(size)))

    def prompts(self, record: Record, original_size: tuple[int, int]) -> Any:
        """The record's prompts, checked against the image size (400s name the record)."""
        from smvision.kinds.sam_prompts import PROMPT_KEYS, parse_prompts

        params = {k: v for k, v in record.params.items() if k in PROMPT_KEYS}
        return parse_prompts(params, original_size, f"record {record.index}", self.settings.max_points)


def load_decoder(model_dir: Path, manifest: Manifest, settings: RuntimeSettings) -> Any:
    """The archive's ONNX decoder on ONNX Runtime (CPU), warmed up with one point."""
    from smvision.models.sam.decoder import SamDecoder
    from smvision.kinds.sam_prompts import parse_prompts

    decoder = SamDecoder(manifest.artifact(model_dir, DECODER), device="cpu", threads=settings.compute_threads()[0])
    size = (683, 1024)
    decoder.decode(np.zeros(EMBEDDING_SHAPE, np.float32), size, parse_prompts({"points": [[10, 10]], "labels": [1]}, size, "warm-up"))
    log.info("SAM %s decoder loaded (ONNX Runtime, CPU)", manifest.config.get("model_type"))
    return decoder


def load(model_dir: Path, manifest: Manifest, settings: RuntimeSettings) -> SamDecodeModel:
    """Load the decoder; embeddings named by S3 reference are read through boto3."""
    return SamDecodeModel(
        load_decoder(model_dir, manifest, settings),
        EmbeddingReader(S3Reader(settings.allowed_buckets)),
        settings,
        everything=load_everything(model_dir, manifest, settings),
    )
