"""'Everything' masks: segment_anything's SamAutomaticMaskGenerator, on our batched ONNX decoder.

The same algorithm and the same helpers (segment_anything.utils.amg): a grid of
points_per_side^2 points per crop (build_all_layer_point_grids, generate_crop_boxes),
the decoder on points_per_batch points at a time, masks kept when predicted IoU >
pred_iou_thresh and stability score >= stability_score_thresh and not cut by a crop
edge, box NMS (torchvision.ops.batched_nms) within each crop and between crops (smaller
crops preferred), then remove_small_regions when min_mask_region_area > 0. Logits are
upsampled only for masks that pass the IoU filter, a few at a time, so memory stays
bounded by the image size rather than by points_per_batch.

The deadline is checked before every crop and point batch and inside the stages whose
time grows with the image: between each chunk's upsampling, stability scores and RLE,
before each NMS, per mask when removing small regions and when encoding the answer. So a
request stops within one step of one chunk of masks (under a second for a 49 MP image on
two busy cores) of its 504, whatever the up-front estimate said.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, Callable, Mapping

import numpy as np

from smvision.errors import InferenceError, bad_request, too_large
from smvision.inflight import check_deadline, current, stage
from smvision.quoting import quote

MODE = "everything"
UPSAMPLE_FLOATS = 1 << 24  # float32 logits upsampled at once (64 MB: a step between deadline checks)
MASKS_PER_PROMPT = 3  # the generator's multimask output
LOW_RES_UPSAMPLED = 1024 * 1024  # every mask's logits go through 1024x1024 first


@dataclass(frozen=True)
class EverythingOptions:
    """SamAutomaticMaskGenerator's knobs, with its defaults."""

    points_per_side: int = 32
    points_per_batch: int = 64
    pred_iou_thresh: float = 0.88
    stability_score_thresh: float = 0.95
    stability_score_offset: float = 1.0
    box_nms_thresh: float = 0.7
    crop_n_layers: int = 0
    crop_nms_thresh: float = 0.7
    crop_overlap_ratio: float = 512 / 1500
    crop_n_points_downscale_factor: int = 1
    min_mask_region_area: int = 0

    def grids(self) -> list[np.ndarray]:
        """Normalised point grids per crop layer (the generator's)."""
        from segment_anything.utils.amg import build_all_layer_point_grids

        return build_all_layer_point_grids(self.points_per_side, self.crop_n_layers, self.crop_n_points_downscale_factor)

    def crops(self, image_size: tuple[int, int]) -> tuple[list[list[int]], list[int]]:
        """Crop boxes (x0, y0, x1, y1) and their layers; the first is the whole image.
        The generator's, less the crops without a pixel (x1 <= x0 or y1 <= y0) that it
        makes on images a few pixels across: they hold no mask."""
        from segment_anything.utils.amg import generate_crop_boxes

        boxes, layers = generate_crop_boxes(image_size, self.crop_n_layers, self.crop_overlap_ratio)
        kept = [(box, layer) for box, layer in zip(boxes, layers) if box[2] > box[0] and box[3] > box[1]]
        return [box for box, _ in kept], [layer for _, layer in kept]

    def lower(self) -> str:
        """The knobs to lower for less work, with their values (for 413 / 504 messages)."""
        return f"lower points_per_side (now {self.points_per_side}) or crop_n_layers (now {self.crop_n_layers})"


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


def mask_pixels(crop_size: tuple[int, int], image_size: tuple[int, int]) -> int:
    """Pixels one mask of a crop goes through: its logits upsampled to 1024x1024 and then
    to the crop (stability score, box), its RLE over the whole image."""
    return LOW_RES_UPSAMPLED + crop_size[0] * crop_size[1] + image_size[0] * image_size[1]


@dataclass(frozen=True)
class Workload:
    """How much work a request asks for, counted before any of it runs."""

    prompts: int  # decoder prompts (grid points over every crop)
    crops: int  # crops to encode besides the whole image
    mask_pixels: int  # over every prompt: mask_pixels() of its crop (per mask it may upsample)
    image_size: tuple[int, int]

    @classmethod
    def of(cls, options: EverythingOptions, image_size: tuple[int, int]) -> "Workload":
        grids = options.grids()
        boxes, layers = options.crops(image_size)
        pixels = sum(
            len(grids[layer]) * mask_pixels((y1 - y0, x1 - x0), image_size)
            for (x0, y0, x1, y1), layer in zip(boxes, layers)
        )
        return cls(sum(len(grids[layer]) for layer in layers), len(layers) - 1, pixels, tuple(image_size))


def _average(old: float, new: float) -> float:
    return new if old == 0.0 else 0.7 * old + 0.3 * new


class WorkRate:
    """What everything mode's work costs, as measured on recent requests (exponential
    averages, seeded at load), to refuse work that cannot fit the deadline: seconds per
    decoder prompt, per mask pixel upsampled, scored and encoded (mask_pixels()), per crop
    encode, and the share of the decoder's masks that pass a positive pred_iou_thresh (only
    those are upsampled; 1 until requests show otherwise)."""

    def __init__(self, per_prompt: float, per_mask_pixel: float = 0.0, per_encode: float = 0.0, kept: float = 1.0) -> None:
        self.per_prompt = per_prompt
        self.per_mask_pixel = per_mask_pixel
        self.per_encode = per_encode
        self.kept = kept

    def seconds(self, work: Workload, options: EverythingOptions, encode_image: bool = False) -> float:
        kept = self.kept if options.pred_iou_thresh > 0.0 else 1.0
        upsampling = MASKS_PER_PROMPT * kept * work.mask_pixels * self.per_mask_pixel
        return work.prompts * self.per_prompt + upsampling + (work.crops + int(encode_image)) * self.per_encode

    def saw_prompts(self, count: int, seconds: float) -> None:
        if count:
            self.per_prompt = _average(self.per_prompt, seconds / count)

    def saw_masks(self, count: int, pixels_each: int, seconds: float) -> None:
        if count:
            self.per_mask_pixel = _average(self.per_mask_pixel, seconds / (count * pixels_each))

    def saw_kept(self, kept: int, decoded: int) -> None:
        if decoded:
            self.kept = 0.7 * self.kept + 0.3 * kept / decoded

    def saw_encode(self, seconds: float) -> None:
        self.per_encode = _average(self.per_encode, seconds)


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


@dataclass(frozen=True, eq=False)
class EverythingResult:
    """The generator's masks, in its order: run lengths plus one record of numbers each."""

    runs: Any  # MaskRuns (K masks of the original size)
    records: list[dict[str, Any]]  # area, bbox (XYWH), predicted_iou, point_coords, stability_score, crop_box


Embedder = Callable[[list[int]], tuple[np.ndarray, tuple[int, int]]]


def generate(
    image_size: tuple[int, int],
    options: EverythingOptions,
    embed: Embedder,
    decoder: Any,
    rate: WorkRate | None = None,
) -> EverythingResult:
    """Every mask of an image of image_size (H, W), as SamAutomaticMaskGenerator.generate.

    embed(crop_box) -> (embedding (1, 256, 64, 64), input size (h, w)) of that crop of
    the image; decoder: a PointBatchDecoder."""
    import time

    import torch
    from segment_anything.utils.amg import MaskData, batch_iterator, uncrop_boxes_xyxy, uncrop_points
    from torchvision.ops import batched_nms, box_area

    crop_boxes, layers = options.crops(image_size)
    grids = options.grids()
    data = MaskData()
    with torch.inference_mode():
        for index, (crop_box, layer) in enumerate(zip(crop_boxes, layers)):
            where = f"crop {index + 1} of {len(crop_boxes)}"
            _check_deadline(f"before {where}", options)
            embedding, input_size = embed(crop_box)
            x0, y0, x1, y1 = crop_box
            crop_size = (y1 - y0, x1 - x0)
            points_for_crop = grids[layer] * np.array(crop_size)[None, ::-1]
            crop = MaskData()
            for number, (points,) in enumerate(batch_iterator(options.points_per_batch, points_for_crop)):
                _check_deadline(f"after {number * options.points_per_batch} points of {where}", options)
                started = time.perf_counter()
                with stage("mask_decoder"):
                    scores, low_res = decoder.decode(embedding, points, crop_size)
                decoded = time.perf_counter()
                with stage("masks"):
                    batch, upsampled = _process_batch(
                        points, scores, low_res, input_size, crop_box, image_size, options, where
                    )
                    crop.cat(batch)
                if rate is not None:
                    rate.saw_prompts(len(points), decoded - started)
                    rate.saw_masks(upsampled, mask_pixels(crop_size, image_size), time.perf_counter() - decoded)
                    if options.pred_iou_thresh > 0.0:
                        rate.saw_kept(upsampled, scores.size)
            _check_deadline(f"before the box NMS of {where}", options)
            with stage("nms"):
                if len(crop["rles"]):
                    keep = batched_nms(
                        crop["boxes"].float(), crop["iou_preds"], torch.zeros(len(crop["boxes"])), options.box_nms_thresh
                    )
                    crop.filter(keep)
                crop["boxes"] = uncrop_boxes_xyxy(crop["boxes"], crop_box)
                crop["points"] = uncrop_points(crop["points"], crop_box)
                crop["crop_boxes"] = torch.tensor([crop_box for _ in range(len(crop["rles"]))]).reshape(-1, 4)
            data.cat(crop)
        _check_deadline("before the NMS between crops", options)
        with stage("nms"):
            if len(crop_boxes) > 1 and len(data["rles"]):  # duplicates between crops: prefer smaller crops
                scores = 1 / box_area(data["crop_boxes"])
                keep = batched_nms(data["boxes"].float(), scores, torch.zeros(len(data["boxes"])), options.crop_nms_thresh)
                data.filter(keep)
        if options.min_mask_region_area > 0 and len(data["rles"]):
            with stage("small_regions"):
                _remove_small_regions(data, options, max(options.box_nms_thresh, options.crop_nms_thresh))
    return _result(data, image_size)


def _check_deadline(what: str, options: EverythingOptions | None) -> None:
    """check_deadline, with the knobs to lower in the 504's message."""
    try:
        check_deadline(what)
    except InferenceError as exc:
        knobs = options.lower() if options is not None else "lower points_per_side"
        raise InferenceError(504, f"{exc.message}; everything mode: {knobs}") from None


def _process_batch(
    points: np.ndarray,
    scores: np.ndarray,
    low_res: np.ndarray,
    input_size: tuple[int, int],
    crop_box: list[int],
    image_size: tuple[int, int],
    options: EverythingOptions,
    where: str = "",
) -> tuple[Any, int]:
    """The generator's _process_batch on (B, 3) scores and (B, 3, 256, 256) logits: filter
    by predicted IoU, stability score and crop edge; masks as COCO RLE in image pixels.
    Returns the MaskData and how many masks were upsampled (those past the IoU filter);
    the deadline is checked between every step of every chunk."""
    import torch
    from segment_anything.utils.amg import MaskData, batched_mask_to_box, calculate_stability_score, is_box_near_crop_edge

    height, width = image_size
    x0, y0, x1, y1 = crop_box
    crop_size = (y1 - y0, x1 - x0)
    iou = torch.from_numpy(scores).flatten()
    logits = torch.from_numpy(low_res).flatten(0, 1)
    point_rows = torch.as_tensor(points.repeat(scores.shape[1], axis=0))
    keep = iou > options.pred_iou_thresh if options.pred_iou_thresh > 0.0 else torch.ones(len(iou), dtype=torch.bool)
    indices = keep.nonzero()[:, 0]
    out = MaskData(
        rles=[],
        areas=torch.zeros(0, dtype=torch.int64),
        iou_preds=iou[:0],
        points=point_rows[:0],
        stability_score=iou[:0],
        boxes=torch.zeros((0, 4), dtype=torch.int64),
    )
    step = max(1, UPSAMPLE_FLOATS // (max(crop_size[0] * crop_size[1], LOW_RES_UPSAMPLED)))
    for start in range(0, len(indices), step):
        chosen = indices[start : start + step]
        span = f"{start + 1}" if len(chosen) == 1 else f"{start + 1}-{start + len(chosen)}"
        masks_of = f"mask(s) {span} of {len(indices)} ({where})"
        _check_deadline(f"before upsampling {masks_of}", options)
        masks = _upscale(logits[chosen], input_size, crop_size)
        _check_deadline(f"after upsampling {masks_of}", options)
        stability = calculate_stability_score(masks, 0.0, options.stability_score_offset)
        stable = stability >= options.stability_score_thresh if options.stability_score_thresh > 0.0 else torch.ones(len(chosen), dtype=torch.bool)
        chosen, stability, masks = chosen[stable], stability[stable], masks[stable] > 0.0
        _check_deadline(f"after the stability scores of {masks_of}", options)
        boxes = batched_mask_to_box(masks)
        inside = ~is_box_near_crop_edge(boxes, crop_box, [0, 0, width, height])
        chosen, stability, masks, boxes = chosen[inside], stability[inside], masks[inside], boxes[inside]
        _check_deadline(f"before the RLE of {masks_of}", options)
        out.cat(
            MaskData(
                rles=_rles(masks.numpy(), crop_box, image_size),
                areas=masks.sum((1, 2), dtype=torch.int64),
                iou_preds=iou[chosen],
                points=point_rows[chosen],
                stability_score=stability,
                boxes=boxes,
            )
        )
    return out, len(indices)


def _upscale(low_res: Any, input_size: tuple[int, int], size: tuple[int, int]) -> Any:
    """(k, 256, 256) logits -> (k, H, W), as Sam.postprocess_masks (bilinear to 1024, crop
    to the input size, bilinear to the image size)."""
    from torch.nn import functional as F

    masks = F.interpolate(low_res[:, None], (1024, 1024), mode="bilinear", align_corners=False)
    masks = masks[..., : input_size[0], : input_size[1]]
    return F.interpolate(masks, size, mode="bilinear", align_corners=False)[:, 0]


def _rles(masks: np.ndarray, crop_box: list[int], image_size: tuple[int, int]) -> list[dict[str, Any]]:
    """(k, h, w) bool masks of a crop -> compressed COCO RLE of the whole image's size."""
    from pycocotools import mask as mask_utils

    if not len(masks):
        return []
    height, width = image_size
    x0, y0, x1, y1 = crop_box
    if (x0, y0, x1, y1) != (0, 0, width, height):
        full = np.zeros((len(masks), height, width), dtype=bool)
        full[:, y0:y1, x0:x1] = masks
        masks = full
    return mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0)).view(np.uint8))


def _remove_small_regions(data: Any, options: EverythingOptions, nms_thresh: float) -> None:
    """The generator's postprocess_small_regions, one mask in memory at a time (the
    deadline checked before each)."""
    import torch
    from pycocotools import mask as mask_utils
    from segment_anything.utils.amg import batched_mask_to_box, remove_small_regions
    from torchvision.ops import batched_nms

    area = options.min_mask_region_area
    boxes, scores, changed_rles, changed_areas = [], [], {}, {}
    for index, rle in enumerate(data["rles"]):
        _check_deadline(f"removing small regions, before mask {index + 1} of {len(data['rles'])}", options)
        mask = mask_utils.decode(rle).astype(bool)
        mask, changed_holes = remove_small_regions(mask, area, mode="holes")
        mask, changed_islands = remove_small_regions(mask, area, mode="islands")
        unchanged = not (changed_holes or changed_islands)
        boxes.append(batched_mask_to_box(torch.as_tensor(mask)[None])[0])
        scores.append(float(unchanged))
        if not unchanged:
            changed_rles[index] = mask_utils.encode(np.asfortranarray(mask[:, :, None]).view(np.uint8))[0]
            changed_areas[index] = int(mask.sum())
    boxes = torch.stack(boxes)
    _check_deadline("before the NMS after removing small regions", options)
    keep = batched_nms(boxes.float(), torch.as_tensor(scores), torch.zeros(len(boxes)), nms_thresh)
    for index in keep.tolist():
        if index in changed_rles:
            data["rles"][index] = changed_rles[index]
            data["areas"][index] = changed_areas[index]
            data["boxes"][index] = boxes[index]
    data.filter(keep)


def _result(data: Any, image_size: tuple[int, int]) -> EverythingResult:
    """The generator's annotation records (without the segmentation) and the masks' runs."""
    from smvision.models.sam.masks import MaskRuns

    rles = list(data["rles"]) if len(data["rles"]) else []
    areas = data["areas"].tolist() if rles else []
    records = []
    for index in range(len(rles)):
        x0, y0, x1, y1 = (int(v) for v in data["boxes"][index].tolist())
        cx0, cy0, cx1, cy1 = (int(v) for v in data["crop_boxes"][index].tolist())
        records.append(
            {
                "area": int(areas[index]),
                "bbox": [x0, y0, x1 - x0, y1 - y0],
                "predicted_iou": round(float(data["iou_preds"][index]), 6),
                "stability_score": round(float(data["stability_score"][index]), 6),
                "point_coords": [[round(float(v), 3) for v in data["points"][index].tolist()]],
                "crop_box": [cx0, cy0, cx1 - cx0, cy1 - cy0],
            }
        )
    return EverythingResult(MaskRuns(tuple(image_size), rles), records)


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
    import json

    from smvision.models.sam.masks import MaskRuns, encode_masks

    with stage("masks"):
        if mask_format == "rle" or not result.records:
            encoded = encode_masks(result.runs, mask_format) if result.records else []
        else:  # one mask decoded at a time: K full-size masks at once could be gigabytes
            runs = result.runs
            encoded = []
            for index, rle in enumerate(runs.rles):
                _check_deadline(f"encoding the answer, before mask {index + 1} of {len(runs.rles)}", options)
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
