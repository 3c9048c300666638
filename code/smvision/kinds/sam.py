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
encoding shows as the `encode` stage of Server-Timing, absent on a hit. "mode":
"everything" answers every mask of the image instead, as SamAutomaticMaskGenerator does
(smvision.kinds.sam_everything; its crops are encoded too).

Settings (smvision.settings, read once at load): SAM_EMBEDDING_CACHE_SIZE embeddings kept
(32; about 4 MB each; 0 turns the cache off); SAM_ENCODER_PRECISION as for sam-encode.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from smvision.cache import LruCache
from smvision.errors import bad_request
from smvision.geo import read_georef
from smvision.images import ImageLoader
from smvision.inflight import check_deadline, stage
from smvision.kinds.sam_everything import EVERYTHING_KEYS, Everything, is_everything, load_everything
from smvision.kinds.sam_decode import answer, geojson_options, load_decoder
from smvision.kinds.sam_encode import image_loader, load_encoder
from smvision.manifest import Manifest
from smvision.params import check_known
from smvision.records import Record, Request, require_image
from smvision.settings import RuntimeSettings


class SamModel:
    """Image encoder, embedding cache and ONNX decoder, loaded once."""

    kind = "sam"

    def __init__(
        self,
        encoder: Any,
        decoder: Any,
        loader: ImageLoader,
        cache: LruCache,
        settings: RuntimeSettings,
        everything: Everything | None = None,
    ) -> None:
        self.settings = settings
        self.encoder = encoder
        self.decoder = decoder
        self.loader = loader
        self.cache = cache
        self.everything = everything

    def predict(self, request: Request) -> list[dict[str, Any]]:
        """One result per record, in order; parameter names are checked before any image is read."""
        from smvision.kinds.sam_prompts import PROMPT_KEYS

        modes = []
        for record in request.records:
            require_image(record)
            everything = is_everything(record.params, record.label())
            check_known(record.params, EVERYTHING_KEYS if everything else ("mode", *PROMPT_KEYS), record.label())
            if everything:
                self._everything().parse(record.params, record.label(), has_image=True)
            modes.append(everything)
        results = []
        for record, everything in zip(request.records, modes):
            check_deadline(f"before record {record.index}")
            results.append(self.segment_everything(record) if everything else self.segment(record))
        return results

    def _everything(self) -> Everything:
        if self.everything is None:
            raise bad_request("this model was loaded without everything mode")
        return self.everything

    def segment_everything(self, record: Record) -> dict[str, Any]:
        """Every mask of the record's image (its embedding cached as in segment(); crops
        encoded when crop_n_layers > 0)."""
        where = record.label()
        everything = self._everything()
        request = everything.parse(record.params, where, has_image=True)
        with stage("fetch"):
            identity = self.loader.identify(record)
        embedding = self.cache.get(identity)
        hit = embedding is not None
        image = None
        if embedding is None or request.options.crop_n_layers > 0:
            with stage("fetch"):
                fetched = self.loader.fetch(record)
            with stage("decode"):
                image = self.loader.decode(record, fetched)  # a 413 over the pixel limit
        size = tuple(int(v) for v in (embedding.original_size if hit else image.shape[:2]))
        everything.check(request, size, where, encode_image=not hit)
        if embedding is None:  # cached with its georeferencing, as segment() caches it
            embedding = replace(self._encode(image), georef=read_georef(fetched.data))
            self.cache.put(fetched.identity, embedding)
        whole = [0, 0, size[1], size[0]]

        def embed(crop_box: list[int]) -> tuple[Any, tuple[int, int]]:
            if list(crop_box) == whole:
                return embedding.array, embedding.input_size
            x0, y0, x1, y1 = crop_box
            crop = self._encode(image[y0:y1, x0:x1])
            return crop.array, crop.input_size

        return {
            "source": record.source.describe(),
            "embedding_cache": "hit" if hit else "miss",
            **everything.run(request, size, embed),
        }

    def _encode(self, image: Any) -> Any:
        """One image's Embedding (the `encode` stage; its time feeds the work estimate)."""
        import time

        started = time.perf_counter()
        with stage("encode"):
            (embedding,) = self.encoder.encode([image])
        if self.everything is not None:
            self.everything.rate.saw_encode(time.perf_counter() - started)
        return embedding

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
            embedding = replace(self._encode(image), georef=georef)
            self.cache.put(fetched.identity, embedding)
        prompts = self.prompts(record, embedding.original_size, embedding.georef)
        with stage("mask_decoder"):
            result = self.decoder.decode(embedding.array, embedding.original_size, prompts)
        return {
            "source": record.source.describe(),
            "embedding_cache": "hit" if hit else "miss",
            **answer(result, prompts, embedding.original_size, embedding.georef, record.label()),
        }

    def prompts(self, record: Record, original_size: tuple[int, int], georef: Any = None) -> Any:
        """The record's prompts, checked against its image's size and georeferencing (400s
        name the record)."""
        from smvision.kinds.sam_prompts import parse_prompts

        size = (int(original_size[0]), int(original_size[1]))
        prompts = parse_prompts(record.params, size, record.label(), self.settings.max_points)
        if prompts.mask_format == "geojson":
            geojson_options(prompts, georef, record.label(), size)
        return prompts


def load(model_dir: Path, manifest: Manifest, settings: RuntimeSettings) -> SamModel:
    """Encoder and decoder from the archive, both warmed up, and an empty cache."""
    return SamModel(
        load_encoder(model_dir, manifest, settings),
        load_decoder(model_dir, manifest, settings),
        image_loader(settings),
        LruCache(settings.embedding_cache_size),
        settings,
        load_everything(model_dir, manifest, settings),
    )
