"""'Everything' masks: segment_anything's SamAutomaticMaskGenerator, on our batched ONNX decoder.

The same algorithm and the same helpers (segment_anything.utils.amg): a grid of
points_per_side^2 points per crop (build_all_layer_point_grids, generate_crop_boxes),
the decoder on points_per_batch points at a time, masks kept when predicted IoU >
pred_iou_thresh and stability score >= stability_score_thresh and not cut by a crop
edge, box NMS (torchvision.ops.batched_nms) within each crop and between crops (smaller
crops preferred), then remove_small_regions when min_mask_region_area > 0. Logits are
upsampled only for masks that pass the IoU filter, a few at a time, so memory stays
bounded by the image size rather than by points_per_batch. The deadline is checked
between point batches.
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
UPSAMPLE_FLOATS = 1 << 26  # float32 logits upsampled at once (256 MB)


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


@dataclass(frozen=True)
class Workload:
    """How much work a request asks for, counted before any of it runs."""

    prompts: int  # decoder prompts (grid points over every crop)
    crops: int  # crops to encode besides the whole image

    @classmethod
    def of(cls, options: EverythingOptions, image_size: tuple[int, int]) -> "Workload":
        grids = options.grids()
        _, layers = options.crops(image_size)
        return cls(sum(len(grids[layer]) for layer in layers), len(layers) - 1)


class WorkRate:
    """Seconds per decoder prompt and per crop encode, as measured on recent requests
    (an exponential average, seeded at load), to refuse work that cannot fit the deadline."""

    def __init__(self, per_prompt: float, per_encode: float = 0.0) -> None:
        self.per_prompt = per_prompt
        self.per_encode = per_encode

    def seconds(self, work: Workload, encode_image: bool = False) -> float:
        return work.prompts * self.per_prompt + (work.crops + int(encode_image)) * self.per_encode

    def saw_prompts(self, count: int, seconds: float) -> None:
        if count:
            self.per_prompt = 0.7 * self.per_prompt + 0.3 * seconds / count

    def saw_encode(self, seconds: float) -> None:
        self.per_encode = seconds if self.per_encode == 0.0 else 0.7 * self.per_encode + 0.3 * seconds


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
        needed = rate.seconds(work, encode_image)
        if needed > left:
            raise InferenceError(
                504,
                f"{where}: everything mode needs about {needed:.0f} s for {work.prompts:,} point prompts over "
                f"{work.crops + 1} crop(s), more than the {max(left, 0):.0f} s left of the request timeout "
                f"(SAGEMAKER_MODEL_SERVER_TIMEOUT); {options.lower()}",
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
            _check_deadline(f"before crop {index + 1} of {len(crop_boxes)}", options)
            embedding, input_size = embed(crop_box)
            x0, y0, x1, y1 = crop_box
            crop_size = (y1 - y0, x1 - x0)
            points_for_crop = grids[layer] * np.array(crop_size)[None, ::-1]
            crop = MaskData()
            for number, (points,) in enumerate(batch_iterator(options.points_per_batch, points_for_crop)):
                if number:
                    _check_deadline(f"after {number * options.points_per_batch} points of crop {index + 1}", options)
                started = time.perf_counter()
                with stage("mask_decoder"):
                    scores, low_res = decoder.decode(embedding, points, crop_size)
                with stage("masks"):
                    crop.cat(_process_batch(points, scores, low_res, input_size, crop_box, image_size, options))
                if rate is not None:
                    rate.saw_prompts(len(points), time.perf_counter() - started)
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
        with stage("nms"):
            if len(crop_boxes) > 1 and len(data["rles"]):  # duplicates between crops: prefer smaller crops
                scores = 1 / box_area(data["crop_boxes"])
                keep = batched_nms(data["boxes"].float(), scores, torch.zeros(len(data["boxes"])), options.crop_nms_thresh)
                data.filter(keep)
        if options.min_mask_region_area > 0 and len(data["rles"]):
            with stage("small_regions"):
                _remove_small_regions(data, options, max(options.box_nms_thresh, options.crop_nms_thresh))
    return _result(data, image_size)


def _check_deadline(what: str, options: EverythingOptions) -> None:
    """check_deadline, with the knobs to lower in the 504's message."""
    try:
        check_deadline(what)
    except InferenceError as exc:
        raise InferenceError(504, f"{exc.message}; everything mode: {options.lower()}") from None


def _process_batch(
    points: np.ndarray,
    scores: np.ndarray,
    low_res: np.ndarray,
    input_size: tuple[int, int],
    crop_box: list[int],
    image_size: tuple[int, int],
    options: EverythingOptions,
) -> Any:
    """The generator's _process_batch on (B, 3) scores and (B, 3, 256, 256) logits: filter
    by predicted IoU, stability score and crop edge; masks as COCO RLE in image pixels."""
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
    step = max(1, UPSAMPLE_FLOATS // (max(crop_size[0] * crop_size[1], 1024 * 1024)))
    for start in range(0, len(indices), step):
        chosen = indices[start : start + step]
        masks = _upscale(logits[chosen], input_size, crop_size)
        stability = calculate_stability_score(masks, 0.0, options.stability_score_offset)
        stable = stability >= options.stability_score_thresh if options.stability_score_thresh > 0.0 else torch.ones(len(chosen), dtype=torch.bool)
        chosen, stability, masks = chosen[stable], stability[stable], masks[stable] > 0.0
        boxes = batched_mask_to_box(masks)
        inside = ~is_box_near_crop_edge(boxes, crop_box, [0, 0, width, height])
        chosen, stability, masks, boxes = chosen[inside], stability[inside], masks[inside], boxes[inside]
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
    return out


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
    """The generator's postprocess_small_regions, one mask in memory at a time."""
    import torch
    from pycocotools import mask as mask_utils
    from segment_anything.utils.amg import batched_mask_to_box, remove_small_regions
    from torchvision.ops import batched_nms

    area = options.min_mask_region_area
    boxes, scores, changed_rles, changed_areas = [], [], {}, {}
    for index, rle in enumerate(data["rles"]):
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


def answer(result: EverythingResult, mask_format: str, original_size: tuple[int, int], max_bytes: int) -> dict[str, Any]:
    """The answer: every mask's record with its "segmentation" in mask_format (through
    encode_masks, so every mask format works); a 413 when it would exceed max_bytes."""
    import json

    from smvision.models.sam.masks import encode_masks

    from smvision.models.sam.masks import MaskRuns

    with stage("masks"):
        if mask_format == "rle" or not result.records:
            encoded = encode_masks(result.runs, mask_format) if result.records else []
        else:  # one mask decoded at a time: K full-size masks at once could be gigabytes
            runs = result.runs
            encoded = [encode_masks(MaskRuns(runs.size, [rle]), mask_format)[0] for rle in runs.rles]
    size = sum(len(json.dumps(m, separators=(",", ":"))) for m in encoded) + 200 * len(encoded)
    if size > max_bytes:
        raise too_large(
            f"everything mode found {len(encoded)} masks, {size:,} bytes as {mask_format}, over the answer limit of "
            f"{max_bytes:,} bytes (SAM_EVERYTHING_MAX_ANSWER_MB); raise pred_iou_thresh or stability_score_thresh, "
            f"lower points_per_side{'' if mask_format == 'rle' else ', or use mask_format rle'}"
        )
    masks = [{"segmentation": segmentation, **record} for segmentation, record in zip(encoded, result.records)]
    return {"mode": MODE, "mask_format": mask_format, "original_size": list(original_size), "masks": masks}
