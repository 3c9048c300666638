""""mode": "everything" for the sam and sam-decode kinds: checks, limits, the batched decoder.

A record asks for it with {"mode": "everything"} plus SamAutomaticMaskGenerator's knobs
(KNOBS) and mask_format; prompts do not apply. Work is counted before it starts (points x
crops, and the pixels each mask is upsampled to: smvision.models.sam.workload) and refused
clearly: over SAM_EVERYTHING_MAX_PROMPTS a 413, over the time left of the request a 504,
each naming the knobs to lower; the deadline is checked again at every checkpoint inside
the work (smvision.models.sam.everything), so a request stops soon after its 504.

Settings (smvision.settings, read once at load): SAM_EVERYTHING_MAX_PROMPTS decoder
prompts (grid points over all crops) per record (16384); SAM_EVERYTHING_MAX_ANSWER_MB
largest answer per record, in MiB (6: SageMaker's real-time limit).
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from smvision.artifacts import POINTS_DECODER
from smvision.errors import InferenceError, bad_request, too_large
from smvision.inflight import check_deadline, current, stage
from smvision.manifest import Manifest
from smvision.models.sam.everything import EverythingOptions, EverythingResult, generate
from smvision.models.sam.workload import WorkRate, Workload
from smvision.quoting import quote
from smvision.settings import RuntimeSettings

log = logging.getLogger("smvision")

MODE = "everything"
MODES = ("prompts", MODE)
#: knob -> (type, lowest, highest, lowest excluded); the ranges the generator makes sense in
KNOBS: dict[str, tuple[type, float, float, bool]] = {
    "points_per_side": (int, 1, 128, False),
    "points_per_batch": (int, 1, 1024, False),
    "pred_iou_thresh": (float, 0.0, 1.0, False),
    "stability_score_thresh": (float, 0.0, 1.0, False),
    "stability_score_offset": (float, 0.0, 100.0, True),
    "box_nms_thresh": (float, 0.0, 1.0, True),
    "crop_n_layers": (int, 0, 4, False),
    "crop_nms_thresh": (float, 0.0, 1.0, True),
    "crop_overlap_ratio": (float, 0.0, 0.99, False),
    "crop_n_points_downscale_factor": (int, 1, 16, False),
    "min_mask_region_area": (int, 0, 10**9, False),
}
assert set(KNOBS) == {f.name for f in fields(EverythingOptions)}


def parse_options(params: Mapping[str, Any], where: str) -> EverythingOptions:
    """The knobs a record sets (others keep the generator's defaults); a 400 names a bad one."""
    values = {}
    for name, (kind, low, high, open_low) in KNOBS.items():
        if name not in params:
            continue
        value = params[name]
        span = f"{'(' if open_low else '['}{low:g}, {high:g}]"
        if kind is int:
            ok = isinstance(value, int) and not isinstance(value, bool) and low <= value <= high
            if not ok:
                raise bad_request(f"{where}: {name} must be an integer in {span}, got {quote(value)}")
        else:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            ok = ok and (low < value if open_low else low <= value) and value <= high
            if not ok:
                raise bad_request(f"{where}: {name} must be a number in {span}, got {quote(value)}")
            value = float(value)
        values[name] = value
    options = EverythingOptions(**values)
    if int(options.points_per_side / options.crop_n_points_downscale_factor**options.crop_n_layers) < 1:
        raise bad_request(
            f"{where}: crop layer {options.crop_n_layers} would have no points: points_per_side "
            f"{options.points_per_side} / crop_n_points_downscale_factor {options.crop_n_points_downscale_factor}"
            f"^{options.crop_n_layers} < 1"
        )
    return options

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
        from smvision.kinds.sam_prompts import MASK_FORMATS

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
        """Every mask of the image, answered (see answer), the request's deadline checked at
        every checkpoint of the work."""
        options = request.options
        result = generate(image_size, options, embed, self.decoder, self.rate, deadline_checkpoint(options))
        return answer(result, request.mask_format, image_size, self.max_answer_bytes, options)


def check_workload(
    work: Workload, options: EverythingOptions, rate: WorkRate, max_prompts: int, where: str, encode_image: bool = False
) -> None:
    """413 over the prompt limit; 504 up front when the work cannot fit the time left."""
    if work.prompts > max_prompts:
        raise too_large(
            f"{where}: everything mode would run {work.prompts:,} point prompts over {work.crops + 1} crop(s), "
            f"more than this endpoint's limit of {max_prompts:,} (SAM_EVERYTHING_MAX_PROMPTS); {options.lower()}"
        )
    inflight = current()
    left = inflight.remaining() if inflight is not None else None
    if left is not None:
        needed = rate.seconds(work, options, encode_image)
        if needed > left:
            raise InferenceError(
                504,
                f"{where}: everything mode needs about {needed:.0f} s for {work.prompts:,} point prompts over "
                f"{work.crops + 1} crop(s) of a {work.image_size[0]}x{work.image_size[1]} image, more than the "
                f"{max(left, 0):.0f} s left of the request timeout (SAGEMAKER_MODEL_SERVER_TIMEOUT); {options.lower()}",
            )


def deadline_checkpoint(options: EverythingOptions | None) -> Callable[[str], None]:
    """A checkpoint for the work (smvision.models.sam.everything) that raises the
    request's 504 once its deadline has passed, naming the knobs to lower."""
    knobs = options.lower() if options is not None else "lower points_per_side"

    def checkpoint(what: str) -> None:
        try:
            check_deadline(what)
        except InferenceError as exc:
            raise InferenceError(504, f"{exc.message}; everything mode: {knobs}") from None

    return checkpoint


def answer(
    result: EverythingResult,
    mask_format: str,
    original_size: tuple[int, int],
    max_bytes: int,
    options: EverythingOptions | None = None,
) -> dict[str, Any]:
    """The answer: every mask's record with its "segmentation" in mask_format (through
    encode_masks, so every mask format works); a 413 when it would exceed max_bytes. The
    deadline is checked before each mask of a format other than rle (options: the knobs
    its 504 names)."""
    from smvision.models.sam.masks import MaskRuns, encode_masks

    checkpoint = deadline_checkpoint(options)

    with stage("masks"):
        if mask_format == "rle" or not result.records:
            encoded = encode_masks(result.runs, mask_format) if result.records else []
        else:  # one mask decoded at a time: K full-size masks at once could be gigabytes
            runs = result.runs
            encoded = []
            for index, rle in enumerate(runs.rles):
                checkpoint(f"encoding the answer, before mask {index + 1} of {len(runs.rles)}")
                encoded.append(encode_masks(MaskRuns(runs.size, [rle]), mask_format)[0])
    size = sum(len(json.dumps(m, separators=(",", ":"))) for m in encoded) + 200 * len(encoded)
    if size > max_bytes:
        raise too_large(
            f"everything mode found {len(encoded)} masks, {size:,} bytes as {mask_format}, over the answer limit of "
            f"{max_bytes:,} bytes (SAM_EVERYTHING_MAX_ANSWER_MB); raise pred_iou_thresh or stability_score_thresh, "
            f"lower points_per_side{'' if mask_format == 'rle' else ', or use mask_format rle'}"
        )
    masks = [{"segmentation": segmentation, **record} for segmentation, record in zip(encoded, result.records)]
    return {"mode": MODE, "mask_format": mask_format, "original_size": list(original_size), "masks": masks}


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
