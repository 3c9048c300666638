"""Model kinds: each turns a batch of records into results. The manifest names the kind."""

from __future__ import annotations

import importlib
import logging
from pathlib import Path
from typing import Any, Protocol

from smvision.manifest import ArchiveError, read_manifest
from smvision.media import MediaTable
from smvision.records import RECORD_PARSERS, Request
from smvision.responses import RESULT_ENCODERS

log = logging.getLogger("smvision")

#: kind name (as written in manifest.json) -> module with load(model_dir, manifest)
KINDS = {
    "efficientdet": "smvision.kinds.efficientdet",
    "sam-encode": "smvision.kinds.sam_encode",
    "sam-decode": "smvision.kinds.sam_decode",
    "sam": "smvision.kinds.sam",
}

#: the media types every kind takes and answers; a kind's `media` may extend or narrow it
BASE_MEDIA = MediaTable(parsers=RECORD_PARSERS, encoders=RESULT_ENCODERS)


class Model(Protocol):
    """What every kind's load() returns. `media` is optional (default BASE_MEDIA)."""

    def predict(self, request: Request) -> list[dict[str, Any]]: ...


def media_of(model: Model) -> MediaTable:
    """The media table of a loaded model: its own, or BASE_MEDIA."""
    return getattr(model, "media", BASE_MEDIA)


def load_model(model_dir: str | Path) -> Model:
    """Read and verify the archive's manifest, then load its kind's model (warmed up)."""
    manifest = read_manifest(model_dir)
    if manifest.kind not in KINDS:
        raise ArchiveError(f"unknown model kind {manifest.kind!r}; this smvision serves {', '.join(KINDS)}")
    if manifest.random_weights:
        log.warning(
            "!!! %s archive at %s holds RANDOMLY INITIALISED weights: its answers are noise. "
            "For demos and tests only. !!!",
            manifest.kind,
            model_dir,
        )
    module = importlib.import_module(KINDS[manifest.kind])
    return module.load(Path(model_dir), manifest)
