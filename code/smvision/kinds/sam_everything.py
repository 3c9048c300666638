""""mode": "everything" for the sam and sam-decode kinds: checks, limits, the batched decoder.

A record asks for it with {"mode": "everything"} plus SamAutomaticMaskGenerator's knobs
(smvision.models.sam.everything.KNOBS) and mask_format; prompts do not apply. Work is
counted before it starts (points x crops, and the pixels each mask is upsampled to) and
refused clearly: over SAM_EVERYTHING_MAX_PROMPTS a 413, over the time left of the
request a 504, each naming the knobs to lower; the deadline is checked again inside the
work (smvision.models.sam.everything), so a request stops soon after its 504.

Settings (smvision.settings, read once at load): SAM_EVERYTHING_MAX_PROMPTS decoder
prompts (grid points over all crops) per record (16384); SAM_EVERYTHING_MAX_ANSWER_MB
largest answer per record, in MiB (6: SageMaker's real-time limit).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from smvision.artifacts import POINTS_DECODER
from smvision.errors import InferenceError, bad_request
from smvision.manifest import Manifest
from smvision.models.sam.everything import (
    KNOBS,
    MODE,
    EverythingOptions,
    WorkRate,
    Workload,
    answer,
    check_workload,
    generate,
    parse_options,
)
from smvision.settings import RuntimeSettings

log = logging.getLogger("smvision")

MODES = ("prompts", MODE)
EVERYTHING_KEYS = ("mode", "mask_format", *KNOBS)
MAX_PROMPTS_ENV = "SAM_EVERYTHING_MAX_PROMPTS"
MAX_ANSWER_ENV = "SAM_EVERYTHING_MAX_ANSWER_MB"


def is_everything(params: Mapping[str, Any], where: str) -> bool:
    """True for "mode": "everything"; False without a mode or for "prompts"; else a 400."""
    mode = params.get("mode", "prompts")
    if mode not in MODES:
        raise bad_request(f"{where}: mode must be one of {', '.join(MODES)}, got {mode!r}"[:300])
    return mode == MODE


@dataclass(frozen=True)
class EverythingRequest:
    """A record's checked everything-mode parameters."""

    options: EverythingOptions
    mask_format: str


class Everything:
    """The batched decoder (None for an archive built before everything mode), its
    measured speed and the limits."""

    def __init__(self, decoder: Any, max_prompts: int, max_answer_bytes: int, rate: WorkRate) -> None:
        self.decoder = decoder
        self.max_prompts = max_prompts
        self.max_answer_bytes = max_answer_bytes
        self.rate = rate

    def parse(self, params: Mapping[str, Any], where: str, has_image: bool) -> EverythingRequest:
        """The knobs and mask_format (400s name the knob); crops need the image."""
        from smvision.models.sam.prompts import MASK_FORMATS

        if self.decoder is None:
            raise InferenceError(
                501, f"{where}: this archive has no batched 'points_decoder' for everything mode (it was built "
                "before it); rebuild it with `smvision archive build`"
            )
        options = parse_options(params, where)
        if options.crop_n_layers > 0 and not has_image:
            raise bad_request(
                f"{where}: crop_n_layers {options.crop_n_layers} needs the image, to encode its crops; sam-decode "
                "has only the embedding: use crop_n_layers 0, or the sam kind (image and prompts in one call)"
            )
        mask_format = params.get("mask_format", "rle")
        if mask_format not in MASK_FORMATS:
            raise bad_request(f"{where}: mask_format must be one of {', '.join(MASK_FORMATS)}, got {mask_format!r}"[:300])
        return EverythingRequest(options, mask_format)

    def check(self, request: EverythingRequest, image_size: tuple[int, int], where: str, encode_image: bool = False) -> None:
        """Refuse (413 / 504) work that is over the limit or cannot fit the time left."""
        work = Workload.of(request.options, image_size)
        check_workload(work, request.options, self.rate, self.max_prompts, where, encode_image)

    def run(
        self,
        request: EverythingRequest,
        image_size: tuple[int, int],
        embed: Callable[[list[int]], tuple[np.ndarray, tuple[int, int]]],
    ) -> dict[str, Any]:
        """Every mask of the image, answered (see smvision.models.sam.everything.answer)."""
        result = generate(image_size, request.options, embed, self.decoder, self.rate)
        return answer(result, request.mask_format, image_size, self.max_answer_bytes, request.options)


def load_everything(model_dir: Path, manifest: Manifest, settings: RuntimeSettings) -> Everything:
    """The archive's batched decoder, warmed up (which also seeds the work rate)."""
    from smvision.models.sam.build import EMBEDDING_SHAPE
    from smvision.models.sam.point_batch import PointBatchDecoder
    from smvision.models.sam.resize import input_size

    max_prompts = settings.everything_max_prompts
    max_answer = settings.everything_max_answer_mb * 1024 * 1024
    if POINTS_DECODER not in manifest.artifacts:
        log.warning("this %s archive has no points_decoder: everything mode is off (rebuild the archive)", manifest.kind)
        return Everything(None, max_prompts, max_answer, WorkRate(0.0))
    threads = settings.compute_threads()[0]
    decoder = PointBatchDecoder(manifest.artifact(model_dir, POINTS_DECODER), device="cpu", threads=threads)
    size = (683, 1024)
    embedding = np.zeros(EMBEDDING_SHAPE, np.float32)
    every_mask = {"pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}

    def embed(crop_box: list[int]) -> tuple[np.ndarray, tuple[int, int]]:
        return embedding, input_size(size)

    generate(size, EverythingOptions(points_per_side=1, **every_mask), embed, decoder)  # imports, first runs
    rate = WorkRate(0.0)  # then measured: 4 prompts, 12 masks upsampled, scored and encoded
    generate(size, EverythingOptions(points_per_side=2, **every_mask), embed, decoder, rate)
    return Everything(decoder, max_prompts, max_answer, rate)
