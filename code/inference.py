"""SageMaker entry script: one file serves every smvision archive kind.

Runs unchanged under smvision's own server and under the AWS PyTorch inference
toolkit (TorchServe). The archive's manifest.json names the model kind.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from smvision.kinds import Model, load_model, media_of
from smvision.media import MediaTable
from smvision.records import Request, parse_request
from smvision.responses import Results

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@dataclass(frozen=True)
class Prediction:
    """Results in record order (and whether the request was list-shaped), with the
    loaded kind's media table: which Accept types it answers, and how."""

    results: Results
    media: MediaTable


def model_fn(model_dir: str, context: Any = None) -> Model:
    """Load the archive in model_dir (manifest checked, model warmed up)."""
    return load_model(model_dir)


def input_fn(input_data: bytes | str, content_type: str, context: Any = None) -> Request:
    """Request body -> records (CSV lines, JSON object/array, JSON lines, raw image)."""
    return parse_request(input_data, content_type)


def predict_fn(data: Request, model: Model, context: Any = None) -> Prediction:
    """Records -> one result per record, in order (the kind refuses body types it does not take)."""
    return Prediction(Results(model.predict(data), data.is_list), media_of(model))


def output_fn(prediction: Prediction, accept: str, context: Any = None) -> tuple[bytes, str]:
    """Results -> (body, content type) for the Accept type, with the model's encoders."""
    return prediction.media.encode(prediction.results, accept)
