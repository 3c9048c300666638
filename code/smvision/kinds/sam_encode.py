"""The sam-encode kind: image records -> SAM image embeddings (torch; a GPU in production).

Per record (optional): `embedding_dtype` "float32" (default) or "float16" (half the
bytes: 2 MB instead of 4 MB, under SageMaker's 6 MB real-time limit with room to spare);
`output_s3_uri` s3://bucket/key.npy (or a prefix ending in "/": <image name>.npy under
it) writes the .npy there and answers its URI instead of the array.

Answers: `application/json` (default) {"source", "embedding": <base64 .npy>,
"original_size": [H, W], "input_size": [h, w]} per record; `application/x-npy` the .npy
bytes of one record's (1, 256, 64, 64) array.

Settings (smvision.settings, read once at load): SAM_ENCODER_PRECISION fp32 (default) |
bf16 (GPU, or a CPU with AVX512-BF16/AMX) | fp16 (GPU); SMVISION_BATCH_SIZE images per
forward pass (4).
"""

from __future__ import annotations

import logging
import posixpath
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from smvision.artifacts import ENCODER
from smvision.errors import InferenceError, bad_request
from smvision.images import ImageLoader
from smvision.inflight import check_deadline, stage
from smvision.manifest import Manifest
from smvision.npy import npy_bytes
from smvision.params import check_known
from smvision.records import Record, Request, parse_s3_reference
from smvision.s3 import S3Reader
from smvision.settings import RuntimeSettings

log = logging.getLogger("smvision")

PARAMETERS = ("embedding_dtype", "output_s3_uri")
EMBEDDING_DTYPES = {"float32": np.float32, "float16": np.float16}
PRECISION_ENV = "SAM_ENCODER_PRECISION"
#: images per forward pass unless SMVISION_BATCH_SIZE says otherwise
DEFAULT_BATCH_SIZE = 4


@dataclass(frozen=True)
class EncodeOptions:
    """A record's checked parameters."""

    dtype: type
    output: tuple[str, str] | None  # (bucket, key) to write the .npy to


class SamEncodeModel:
    """A loaded SAM image encoder, its image loader and batch size."""

    kind = "sam-encode"

    def __init__(self, encoder: Any, loader: ImageLoader, batch_size: int, settings: RuntimeSettings) -> None:
        self.settings = settings
        self.encoder = encoder
        self.loader = loader
        self.batch_size = batch_size

    def predict(self, request: Request) -> list[dict[str, Any]]:
        """One result per record, in order; all parameters are checked before any image is read."""
        options = {record.index: self.options(record) for record in request.records}
        results: list[dict[str, Any]] = []
        for records, images in self.loader.batches(request.records, self.batch_size):
            check_deadline("before encoding a batch")
            with stage("forward"):
                embeddings = self.encoder.encode(images)
            for record, embedding in zip(records, embeddings):
                results.append(self.result(record, embedding, options[record.index]))
        return results

    def options(self, record: Record) -> EncodeOptions:
        """The record's embedding_dtype and output_s3_uri, checked (400s name the record)."""
        where = record.label()
        check_known(record.params, PARAMETERS, where)
        name = record.params.get("embedding_dtype", "float32")
        if name not in EMBEDDING_DTYPES:
            raise bad_request(f"{where}: embedding_dtype must be one of {', '.join(EMBEDDING_DTYPES)}, got {name!r}")
        uri = record.params.get("output_s3_uri")
        output = None
        if uri is not None:
            if not isinstance(uri, str) or not uri.startswith("s3://"):
                raise bad_request(f"{where}: output_s3_uri must be a string like s3://bucket/key.npy, got {uri!r}")
            output = _output_location(uri, record, where)
        return EncodeOptions(EMBEDDING_DTYPES[name], output)

    def result(self, record: Record, embedding: Any, options: EncodeOptions) -> dict[str, Any]:
        """One record's answer: the embedding (or where it was written) and SamPredictor's sizes."""
        array = embedding.array.astype(options.dtype, copy=False)
        result: dict[str, Any] = {"source": record.source.describe()}
        if options.output is None:
            result["embedding"] = array
        else:
            bucket, key = options.output
            with stage("write"):
                try:
                    self.loader.reader.put(bucket, key, npy_bytes(array))
                except InferenceError as exc:
                    raise InferenceError(exc.status_code, f"record {record.index}: {exc.message}") from None
            result["embedding_s3_uri"] = f"s3://{bucket}/{key}"
            result["embedding_dtype"] = str(array.dtype)
        result["original_size"] = list(embedding.original_size)
        result["input_size"] = list(embedding.input_size)
        return result


def _output_location(uri: str, record: Record, where: str) -> tuple[str, str]:
    """(bucket, key) for output_s3_uri; a prefix ending in '/' gets <image name>.npy."""
    if uri.endswith("/"):
        bucket, prefix = parse_s3_reference(uri + "x")
        prefix = prefix[:-1]
        source = record.source
        if source is None or source.key is None:
            raise bad_request(f"{where}: an output_s3_uri prefix needs an S3 image to name the .npy; give a full key")
        stem = posixpath.splitext(posixpath.basename(source.key))[0]
        return bucket, f"{prefix}{stem}.npy"
    return parse_s3_reference(uri)


def load(model_dir: Path, manifest: Manifest, settings: RuntimeSettings) -> SamEncodeModel:
    """Build the image encoder from the archive, on a GPU when there is one; warm it up."""
    encoder = load_encoder(model_dir, manifest, settings)
    return SamEncodeModel(encoder, image_loader(settings), settings.batch_size or DEFAULT_BATCH_SIZE, settings)


def image_loader(settings: RuntimeSettings) -> ImageLoader:
    """The ImageLoader the settings ask for (allowed buckets, pixel limit)."""
    return ImageLoader(S3Reader(settings.allowed_buckets), settings.max_image_pixels)


def load_encoder(model_dir: Path, manifest: Manifest, settings: RuntimeSettings) -> Any:
    """The archive's SamEncoder (precision from SAM_ENCODER_PRECISION), warmed up."""
    import torch

    from smvision.models.sam.build import sam_config
    from smvision.models.sam.encoder import SamEncoder

    config = sam_config(manifest.config["model_type"])
    state_dict = torch.load(manifest.artifact(model_dir, ENCODER), map_location="cpu", weights_only=True)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    precision = settings.encoder_precision
    try:
        encoder = SamEncoder(config, state_dict, device=device, precision=precision)
    except ValueError as exc:
        raise ValueError(f"{PRECISION_ENV}: {exc}") from None
    encoder.warm_up()
    log.info("SAM %s image encoder loaded on %s (%s)", config.model_type, device, precision)
    return encoder
