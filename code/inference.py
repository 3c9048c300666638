"""SageMaker entry script: one file serves every smvision archive kind.

Runs unchanged under smvision's own server and under the AWS PyTorch inference
toolkit (TorchServe). The archive's manifest.json names the model kind; its row in
smvision.kinds says which media types it takes and answers.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from smvision.kinds import Model, kind_of, load_model, parse_for
from smvision.media import MediaTable
from smvision.responses import Results

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@dataclass(frozen=True)
class Body:
    """A request body and its Content-Type, as they came: the kind parses it (predict_fn),
    since only the loaded model knows which types its kind takes."""

    data: bytes | str
    content_type: str | None


@dataclass(frozen=True)
class Prediction:
    """Results in record order (and whether the request was list-shaped), with the
    loaded kind's media table: which Accept types it answers, and how."""

    results: Results
    media: MediaTable


def model_fn(model_dir: str, context: Any = None) -> Model:
    """Load the archive in model_dir (manifest checked, settings read, model warmed up)."""
    return load_model(model_dir)


def input_fn(input_data: bytes | str, content_type: str, context: Any = None) -> Body:
    """The body, handed on to be parsed with the kind's own media table."""
    return Body(input_data, content_type)


def predict_fn(data: Body, model: Model, context: Any = None) -> Prediction:
    """Body -> records (CSV lines, JSON object/array, JSON lines, raw image, .npz: what the
    kind takes, else a 415 listing it) -> one result per record, in order."""
    request = parse_for(model, data.data, data.content_type)
    return Prediction(Results(model.predict(request), request.is_list), kind_of(model).media)


def output_fn(prediction: Prediction, accept: str, context: Any = None) -> tuple[bytes, str]:
    """Results -> (body, content type) for the Accept type, with the kind's encoders."""
    return prediction.media.encode(prediction.results, accept)
