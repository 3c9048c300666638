"""Model kinds: one row each. The manifest names the kind; everything else follows from its row.

A row says what a kind is called (the manifest's and the CLI's word), which module loads
it (`load(model_dir, manifest, settings)` returns the model), which media types it takes
and answers (its table is built from smvision.records.PARSERS and
smvision.responses.ENCODERS, so a 415 or 406 lists exactly what that kind handles), which
artifact roles its archives carry, the lines of its code/requirements.txt, which archive
builder makes it, and its one line of CLI help. Adding a kind is one module plus one row
(README, "Adding a model kind").
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

from smvision.artifacts import DECODER, ENCODER, ONNX, POINTS_DECODER, WEIGHTS
from smvision.manifest import ArchiveError, read_manifest
from smvision.media import IMAGE_RECORDS, JSON, JSONLINES, NPY, NPZ, MediaTable
from smvision.records import PARSERS, Request
from smvision.responses import ENCODERS
from smvision.settings import RuntimeSettings

log = logging.getLogger("smvision")

#: Pins equal the repository's requirements.txt (a test checks). The AWS PyTorch 2.6 image
#: already has torch, torchvision, numpy, pillow and boto3: a row lists only what its kind
#: imports beyond those (pybase64: base64 of 4 MB embeddings in about 1 ms, not 12).
_SAM_DECODE_REQUIREMENTS = (
    "onnxruntime==1.31.1",  # the decoder
    "segment-anything==1.0",  # ResizeLongestSide for prompt coordinates, the amg utilities
    "pycocotools==2.0.11",  # RLE masks
    "opencv-python-headless==5.0.0.93",  # polygons
    "pybase64==1.5.1",
    "rasterio==1.4.4",  # GeoJSON outlines
    "shapely==2.2.0",  # GeoJSON simplification and geometry
)


@dataclass(frozen=True)
class Kind:
    """One model kind's row."""

    name: str
    module: str
    takes: tuple[str, ...]
    answers: tuple[str, ...]
    roles: tuple[str, ...]
    requirements: tuple[str, ...]
    builder: str  # "efficientdet" | "sam": smvision.archive's builder for this kind's archives
    help: str
    media: MediaTable = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        table = MediaTable(
            parsers={t: PARSERS[t] for t in self.takes}, encoders={t: ENCODERS[t] for t in self.answers}
        )
        object.__setattr__(self, "media", table)

    def load(self, model_dir: Path, manifest: Any, settings: RuntimeSettings) -> "Model":
        """The kind's model from an extracted archive (its module's load)."""
        return importlib.import_module(self.module).load(model_dir, manifest, settings)


KINDS: dict[str, Kind] = {
    kind.name: kind
    for kind in (
        Kind(
            "efficientdet",
            "smvision.kinds.efficientdet",
            takes=IMAGE_RECORDS,
            answers=(JSON, JSONLINES),
            roles=(WEIGHTS, ONNX),
            requirements=("efficientnet_pytorch==0.7.1",),
            builder="efficientdet",
            help="EfficientDet D0-D7x (zylo117 weights): images -> detections",
        ),
        Kind(
            "sam-encode",
            "smvision.kinds.sam_encode",
            takes=IMAGE_RECORDS,
            answers=(JSON, JSONLINES, NPY),
            roles=(ENCODER,),
            requirements=("segment-anything==1.0", "pybase64==1.5.1"),
            builder="sam",
            help="SAM image encoder (torch): images -> embeddings",
        ),
        Kind(
            "sam-decode",
            "smvision.kinds.sam_decode",
            takes=(JSON, JSONLINES, NPZ),
            answers=(JSON, JSONLINES),
            roles=(DECODER, POINTS_DECODER),
            requirements=_SAM_DECODE_REQUIREMENTS,
            builder="sam",
            help="SAM prompt encoder + mask decoder (ONNX Runtime): embedding + prompts -> masks",
        ),
        Kind(
            "sam",
            "smvision.kinds.sam",
            takes=IMAGE_RECORDS,
            answers=(JSON, JSONLINES),
            roles=(ENCODER, DECODER, POINTS_DECODER),
            requirements=_SAM_DECODE_REQUIREMENTS,  # the encoder needs only segment-anything, listed there
            builder="sam",
            help="SAM in one call: image + prompts -> masks, with an embedding cache",
        ),
    )
}


class Model(Protocol):
    """What every kind's load() returns: its row's name and the settings it was loaded with."""

    kind: ClassVar[str]
    settings: RuntimeSettings

    def predict(self, request: Request) -> list[dict[str, Any]]: ...


def kind_of(model: Model) -> Kind:
    """The registry row of a loaded model."""
    return KINDS[model.kind]


def parse_for(model: Model, body: bytes | str, content_type: str | None) -> Request:
    """A request body as records, parsed with the model's kind's table (415 for a type it
    does not take, listing the ones it does)."""
    return kind_of(model).media.parse(body, content_type, model.settings.max_records)


def load_model(model_dir: str | Path, settings: RuntimeSettings | None = None) -> Model:
    """Read and verify the archive's manifest, then load its kind's model (warmed up) with
    settings (default: read from the environment now, once)."""
    settings = settings if settings is not None else RuntimeSettings.from_env()
    manifest = read_manifest(model_dir)
    kind = KINDS.get(manifest.kind)
    if kind is None:
        raise ArchiveError(f"unknown model kind {manifest.kind!r}; this smvision serves {', '.join(KINDS)}")
    if manifest.random_weights:
        log.warning(
            "!!! %s archive at %s holds RANDOMLY INITIALISED weights: its answers are noise. "
            "For demos and tests only. !!!",
            manifest.kind,
            model_dir,
        )
    from smvision.threads import use_threads

    use_threads(settings)
    return kind.load(Path(model_dir), manifest, settings)
