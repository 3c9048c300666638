"""'Everything' masks: segment_anything's SamAutomaticMaskGenerator, on our batched ONNX decoder.

The same algorithm and the same helpers (segment_anything.utils.amg): a grid of
points_per_side^2 points per crop (build_all_layer_point_grids, generate_crop_boxes),
the decoder on points_per_batch points at a time, masks kept when predicted IoU >
pred_iou_thresh and stability score >= stability_score_thresh and not cut by a crop
edge, box NMS (torchvision.ops.batched_nms) within each crop and between crops (smaller
crops preferred), then remove_small_regions when min_mask_region_area > 0. Logits are
upsampled only for masks that pass the IoU filter, a few at a time, so memory stays
bounded by the image size rather than by points_per_batch.

`checkpoint(what)` is called before every crop and point batch and inside the stages
whose time grows with the image: between each chunk's upsampling, stability scores and
RLE, before each NMS, per mask when removing small regions. The caller decides what a
checkpoint does (the kinds check the request's deadline there, so a request stops within
one step of one chunk of masks of its 504: under a second for a 49 MP image on two busy
cores); this module raises nothing of its own and knows nothing of requests.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from smvision.inflight import stage
from smvision.models.sam.workload import LOW_RES_UPSAMPLED, WorkRate, mask_pixels

UPSAMPLE_FLOATS = 1 << 24  # float32 logits upsampled at once (64 MB: a step between checkpoints)

#: checkpoint(what is next): called between the steps of the work
Checkpoint = Callable[[str], None]


def no_checkpoint(what: str) -> None:
    """The checkpoint of work without a deadline."""


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
        """The knobs to lower for less work, with their values (for messages)."""
        return f"lower points_per_side (now {self.points_per_side}) or crop_n_layers (now {self.crop_n_layers})"


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
    checkpoint: Checkpoint = no_checkpoint,
) -> EverythingResult:
    """Every mask of an image of image_size (H, W), as SamAutomaticMaskGenerator.generate.

    embed(crop_box) -> (embedding (1, 256, 64, 64), input size (h, w)) of that crop of
    the image; decoder: a PointBatchDecoder; rate: updated with what the work took;
    checkpoint: called between the steps."""
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
            checkpoint(f"before {where}")
            embedding, input_size = embed(crop_box)
            x0, y0, x1, y1 = crop_box
            crop_size = (y1 - y0, x1 - x0)
            points_for_crop = grids[layer] * np.array(crop_size)[None, ::-1]
            crop = MaskData()
            for number, (points,) in enumerate(batch_iterator(options.points_per_batch, points_for_crop)):
                checkpoint(f"after {number * options.points_per_batch} points of {where}")
                started = time.perf_counter()
                with stage("mask_decoder"):
                    scores, low_res = decoder.decode(embedding, points, crop_size)
                decoded = time.perf_counter()
                with stage("masks"):
                    batch, upsampled = _process_batch(
                        points, scores, low_res, input_size, crop_box, image_size, options, checkpoint, where
                    )
                    crop.cat(batch)
                if rate is not None:
                    rate.saw_prompts(len(points), decoded - started)
                    rate.saw_masks(upsampled, mask_pixels(crop_size, image_size), time.perf_counter() - decoded)
                    if options.pred_iou_thresh > 0.0:
                        rate.saw_kept(upsampled, scores.size)
            checkpoint(f"before the box NMS of {where}")
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
        checkpoint("before the NMS between crops")
        with stage("nms"):
            if len(crop_boxes) > 1 and len(data["rles"]):  # duplicates between crops: prefer smaller crops
                scores = 1 / box_area(data["crop_boxes"])
                keep = batched_nms(data["boxes"].float(), scores, torch.zeros(len(data["boxes"])), options.crop_nms_thresh)
                data.filter(keep)
        if options.min_mask_region_area > 0 and len(data["rles"]):
            with stage("small_regions"):
                _remove_small_regions(data, options, max(options.box_nms_thresh, options.crop_nms_thresh), checkpoint)
    return _result(data, image_size)


def _process_batch(
    points: np.ndarray,
    scores: np.ndarray,
    low_res: np.ndarray,
    input_size: tuple[int, int],
    crop_box: list[int],
    image_size: tuple[int, int],
    options: EverythingOptions,
    checkpoint: Checkpoint = no_checkpoint,
    where: str = "",
) -> tuple[Any, int]:
    """The generator's _process_batch on (B, 3) scores and (B, 3, 256, 256) logits: filter
    by predicted IoU, stability score and crop edge; masks as COCO RLE in image pixels.
    Returns the MaskData and how many masks were upsampled (those past the IoU filter);
    checkpoint is called between every step of every chunk."""
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
        checkpoint(f"before upsampling {masks_of}")
        masks = _upscale(logits[chosen], input_size, crop_size)
        checkpoint(f"after upsampling {masks_of}")
        stability = calculate_stability_score(masks, 0.0, options.stability_score_offset)
        stable = stability >= options.stability_score_thresh if options.stability_score_thresh > 0.0 else torch.ones(len(chosen), dtype=torch.bool)
        chosen, stability, masks = chosen[stable], stability[stable], masks[stable] > 0.0
        checkpoint(f"after the stability scores of {masks_of}")
        boxes = batched_mask_to_box(masks)
        inside = ~is_box_near_crop_edge(boxes, crop_box, [0, 0, width, height])
        chosen, stability, masks, boxes = chosen[inside], stability[inside], masks[inside], boxes[inside]
        checkpoint(f"before the RLE of {masks_of}")
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


def _remove_small_regions(data: Any, options: EverythingOptions, nms_thresh: float, checkpoint: Checkpoint) -> None:
    """The generator's postprocess_small_regions, one mask in memory at a time (checkpoint
    before each)."""
    import torch
    from pycocotools import mask as mask_utils
    from segment_anything.utils.amg import batched_mask_to_box, remove_small_regions
    from torchvision.ops import batched_nms

    area = options.min_mask_region_area
    boxes, scores, changed_rles, changed_areas = [], [], {}, {}
    for index, rle in enumerate(data["rles"]):
        checkpoint(f"removing small regions, before mask {index + 1} of {len(data['rles'])}")
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
    checkpoint("before the NMS after removing small regions")
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
