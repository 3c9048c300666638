"""SageMaker entry script: one file serves every smvision archive kind.

Runs unchanged under smvision's own server and under the AWS PyTorch inference
toolkit (TorchServe). The archive's manifest.json names the model kind.
"""

from __future__ import annotations

import logging
from typing import Any

from smvision.kinds import Model, load_model
from smvision.records import Request, parse_request
from smvision.responses import encode_results

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


class Prediction:
    """Results in record order, and whether the request was list-shaped."""

    def __init__(self, results: list[dict[str, Any]], is_list: bool) -> None:
        self.results = results
        self.is_list = is_list


def model_fn(model_dir: str, context: Any = None) -> Model:
    """Load the archive in model_dir (manifest checked, model warmed up)."""
    return load_model(model_dir)


def input_fn(input_data: bytes | str, content_type: str, context: Any = None) -> Request:
    """Request body -> records (CSV lines, JSON object/array, JSON lines, raw image)."""
    return parse_request(input_data, content_type)


def predict_fn(data: Request, model: Model, context: Any = None) -> Prediction:
    """Records -> one result per record, in order."""
    return Prediction(model.predict(data), data.is_list)


def output_fn(prediction: Prediction, accept: str, context: Any = None) -> tuple[bytes, str]:
    """Results -> (body, content type) for the Accept type."""
    return encode_results(prediction.results, prediction.is_list, accept)
