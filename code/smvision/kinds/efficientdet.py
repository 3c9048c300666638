"""The EfficientDet kind: records -> images -> batched detection -> results.

Settings (smvision.settings, read once at load): EFFICIENTDET_COMPOUND_COEF (if set, must
match the archive: a guard, not a switch), DEFAULT_PRED_THRESHOLD / DEFAULT_IOU_THRESHOLD /
DEFAULT_MAX_DETECTIONS (when a record gives none), USE_FLOAT16 (a GPU only),
SMVISION_RUNTIME and SMVISION_BATCH_SIZE (smvision.kinds.efficientdet_runtime).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from smvision.errors import bad_request
from smvision.images import ImageLoader
from smvision.inflight import check_deadline
from smvision.manifest import ArchiveError, Manifest
from smvision.params import check_known, unit_interval
from smvision.quoting import quote
from smvision.records import Record, Request
from smvision.s3 import S3Reader
from smvision.settings import RuntimeSettings

log = logging.getLogger("smvision")

PARAMETERS = ("pred_threshold", "iou_threshold", "max_detections")
CLASSES_FILE = "classes.json"
#: COCO evaluation's and rwightman's effdet's cap; the largest a request may ask for.
DEFAULT_MAX_DETECTIONS = 100
MAX_DETECTIONS_LIMIT = 10_000


@dataclass(frozen=True)
class Thresholds:
    pred: float
    iou: float
    max_detections: int = DEFAULT_MAX_DETECTIONS


class EfficientDetModel:
    """A loaded detector plus its class names, default thresholds and image loader."""

    kind = "efficientdet"

    def __init__(
        self,
        detector: Any,
        classes: list[str],
        defaults: Thresholds,
        loader: ImageLoader,
        batch_size: int,
        settings: RuntimeSettings,
    ) -> None:
        self.settings = settings
        self.detector = detector
        self.classes = classes
        self.defaults = defaults
        self.loader = loader
        self.batch_size = batch_size

    def predict(self, request: Request) -> list[dict[str, Any]]:
        """One result per record, in order; all parameters are checked before any image is read."""
        thresholds = {record.index: self.thresholds(record) for record in request.records}
        results: list[dict[str, Any]] = []
        for records, images in self.loader.batches(request.records, self.batch_size):
            check_deadline(f"after {len(results)} of {len(request.records)} records")
            found = self.detector.detect(
                images,
                [thresholds[r.index].pred for r in records],
                [thresholds[r.index].iou for r in records],
            )
            results.extend(
                self.result(r, image, d, thresholds[r.index].max_detections)
                for r, image, d in zip(records, images, found)
            )
        return results

    def thresholds(self, record: Record) -> Thresholds:
        """The record's thresholds: its own if given (each in (0, 1]; max_detections a
        whole number in 1..10000), else the defaults."""
        where = record.label()
        check_known(record.params, PARAMETERS, where)
        pred = record.params.get("pred_threshold")
        iou = record.params.get("iou_threshold")
        cap = record.params.get("max_detections")
        return Thresholds(
            pred=self.defaults.pred if pred is None else unit_interval(pred, "pred_threshold", where),
            iou=self.defaults.iou if iou is None else unit_interval(iou, "iou_threshold", where),
            max_detections=self.defaults.max_detections if cap is None else max_detections(cap, where),
        )

    def result(self, record: Record, image: np.ndarray, found: Any, max_detections: int | None = None) -> dict[str, Any]:
        """The detections of one image (README, "Responses"): boxes in original-image
        pixels, with class names, best first, at most max_detections of them.

        zylo117 clips boxes to the padded square input, so a box may run past the
        image's bottom or right edge, or lie wholly in the padding; here boxes are
        clipped to the image itself and those left with no area are dropped.
        """
        height, width = image.shape[:2]
        boxes = np.clip(found.boxes, 0, [width, height, width, height])
        keep = np.flatnonzero((boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1]))[:max_detections]
        boxes, scores, class_ids = boxes[keep], found.scores[keep], found.class_ids[keep]
        detections = [
            {
                "bbox": [round(float(v), 2) for v in box],
                "score": round(float(score), 5),
                "class_id": int(class_id),
                "class": self.class_name(int(class_id)),
            }
            for box, score, class_id in zip(boxes.tolist(), scores.tolist(), class_ids.tolist())
        ]
        return {"source": record.source.describe(), "image_size": [width, height], "detections": detections}

    def class_name(self, class_id: int) -> str:
        name = self.classes[class_id] if 0 <= class_id < len(self.classes) else ""
        return name or f"class_{class_id}"


def max_detections(value: Any, where: str) -> int:
    """A whole number in 1..MAX_DETECTIONS_LIMIT, or a 400 naming the parameter."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not float(value).is_integer():
        raise bad_request(f"{where}: max_detections must be a whole number in 1..{MAX_DETECTIONS_LIMIT}, got {quote(value)}")
    if not 1 <= value <= MAX_DETECTIONS_LIMIT:
        raise bad_request(f"{where}: max_detections must be in 1..{MAX_DETECTIONS_LIMIT}, got {quote(value)}")
    return int(value)


def load(model_dir: Path, manifest: Manifest, settings: RuntimeSettings) -> EfficientDetModel:
    """Build the detector from the archive, check it against the settings, warm it up."""
    from smvision.kinds.efficientdet_runtime import batch_size, detector_device, load_detector
    from smvision.models.efficientdet.config import EfficientDetConfig

    config = EfficientDetConfig.from_dict(manifest.config)
    if settings.compound_coef is not None and settings.compound_coef != config.compound_coef:
        raise ArchiveError(
            f"EFFICIENTDET_COMPOUND_COEF={settings.compound_coef} but the archive at {model_dir} holds "
            f"D{config.compound_coef}; rebuild the archive or unset the variable"
        )
    classes = json.loads((model_dir / CLASSES_FILE).read_text())
    if len(classes) != config.num_classes:
        raise ArchiveError(f"{CLASSES_FILE} names {len(classes)} classes; the model has {config.num_classes}")
    detector = load_detector(model_dir, manifest, config, settings)
    device = f"{detector_device(detector)} ({detector.runtime})"
    defaults = Thresholds(settings.pred_threshold, settings.iou_threshold, settings.max_detections)
    detector.warm_up()
    log.info(
        "EfficientDet D%d loaded on %s (%d classes, thresholds %.2f/%.2f, at most %d detections)",
        config.compound_coef,
        device,
        config.num_classes,
        defaults.pred,
        defaults.iou,
        defaults.max_detections,
    )
    loader = ImageLoader(S3Reader(settings.allowed_buckets), settings.max_image_pixels)
    return EfficientDetModel(detector, classes, defaults, loader, batch_size(detector, settings), settings)
