"""The sam kind: an image and prompts -> masks in one call, each image encoded once.

SamPredictor's split, served: the image encoder (torch) turns an image into an
embedding, kept in an in-memory LRU cache keyed by the image's identity (S3 bucket/key
and ETag, read with a HEAD request; sha256 for inline bytes); the ONNX decoder turns
embedding + prompts into masks. A cache hit skips fetching, decoding and encoding the
image: a second prompt on the same image costs one HEAD and one decode of the prompts.

Records: the image records of every kind (JSON with bucket/key, s3_uri or image; JSON
lines; CSV lines and raw images carry no prompts, so they are 400s) with the prompts of
sam-decode (points + labels, box, mask_input, multimask_output, mask_format,
return_logits). The answer is sam-decode's plus "source" and "embedding_cache" ("hit" or
"miss"); with mask_format "geojson", a GeoTIFF's own georeferencing (kept with its
embedding) gives map coordinates unless the request gives a geotransform. The time spent
encoding shows as the `encode` stage of Server-Timing, absent on a hit.

Environment (read once at load):
  SAM_EMBEDDING_CACHE_SIZE  embeddings kept (32; about 4 MB each; 0 turns the cache off)
  SAM_ENCODER_PRECISION     as for sam-encode
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from smvision.cache import LruCache
from smvision.geo import read_georef
from smvision.images import ImageLoader
from smvision.inflight import check_deadline, stage
from smvision.kinds import BASE_MEDIA
from smvision.kinds.sam_decode import answer, geojson_options, load_decoder
from smvision.kinds.sam_encode import load_encoder
from smvision.manifest import Manifest
from smvision.params import check_known, env_int
from smvision.records import Record, Request, require_image

CACHE_SIZE_ENV = "SAM_EMBEDDING_CACHE_SIZE"
DEFAULT_CACHE_SIZE = 32


class SamModel:
    """Image encoder, embedding cache and ONNX decoder, loaded once."""

    media = BASE_MEDIA

    def __init__(self, encoder: Any, decoder: Any, loader: ImageLoader, cache: LruCache) -> None:
        self.encoder = encoder
        self.decoder = decoder
        self.loader = loader
        self.cache = cache

    def predict(self, request: Request) -> list[dict[str, Any]]:
        """One result per record, in order; parameter names are checked before any image is read."""
        from smvision.models.sam.prompts import PROMPT_KEYS

        for record in request.records:
            require_image(record)
            check_known(record.params, PROMPT_KEYS, record.label())
        results = []
        for record in request.records:
            check_deadline(f"before record {record.index}")
            results.append(self.segment(record))
        return results

    def segment(self, record: Record) -> dict[str, Any]:
        """Masks for one record's prompts on its image's (cached, or new) embedding."""
        with stage("fetch"):
            identity = self.loader.identify(record)
        embedding = self.cache.get(identity)
        hit = embedding is not None
        if embedding is None:
            with stage("fetch"):
                fetched = self.loader.fetch(record)
            with stage("decode"):
                image = self.loader.decode(record, fetched)
            georef = read_georef(fetched.data)
            self.prompts(record, image.shape[:2], georef)  # a bad prompt is a 400 before the costly encode
            with stage("encode"):
                (embedding,) = self.encoder.encode([image])
            embedding = replace(embedding, georef=georef)
            self.cache.put(fetched.identity, embedding)
        prompts = self.prompts(record, embedding.original_size, embedding.georef)
        with stage("mask_decoder"):
            result = self.decoder.decode(embedding.array, embedding.original_size, prompts)
        return {
            "source": record.source.describe(),
            "embedding_cache": "hit" if hit else "miss",
            **answer(result, prompts, embedding.original_size, embedding.georef, record.label()),
        }

    @staticmethod
    def prompts(record: Record, original_size: tuple[int, int], georef: Any = None) -> Any:
        """The record's prompts, checked against its image's size and georeferencing (400s
        name the record)."""
        from smvision.models.sam.prompts import parse_prompts

        prompts = parse_prompts(record.params, (int(original_size[0]), int(original_size[1])), record.label())
        if prompts.mask_format == "geojson":
            geojson_options(prompts, georef, record.label())
        return prompts


def load(model_dir: Path, manifest: Manifest) -> SamModel:
    """Encoder and decoder from the archive, both warmed up, and an empty cache."""
    cache = LruCache(env_int(CACHE_SIZE_ENV, DEFAULT_CACHE_SIZE, 0, 100_000))
    return SamModel(load_encoder(model_dir, manifest), load_decoder(model_dir, manifest), ImageLoader(), cache)
