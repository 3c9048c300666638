"""Model kinds: each turns a batch of records into results. The manifest names the kind."""

from __future__ import annotations

import importlib
import logging
from pathlib import Path
from typing import Any, Protocol

from smvision.manifest import ArchiveError, read_manifest
from smvision.records import Request

log = logging.getLogger("smvision")

#: kind name (as written in manifest.json) -> module with load(model_dir, manifest)
KINDS = {
    "efficientdet": "smvision.kinds.efficientdet",
}


class Model(Protocol):
    """What every kind's load() returns."""

    def predict(self, request: Request) -> list[dict[str, Any]]: ...


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
