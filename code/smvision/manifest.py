"""The archive manifest: which model kind, its configuration, its artifacts, and each
file's sha256.

One format for every model kind. `smvision archive build` writes it; model_fn reads it
and refuses an archive whose files do not match. `artifacts` names each file the kind
loads by its role (EfficientDet: {"weights": "model.pth"}; SAM: {"encoder": ...,
"decoder": ...}). Format 1 (one `weights` file) is still read, as {"weights": file}.

The sha256 check guards against a damaged or incomplete archive, not a malicious one:
whoever can change the files can change the manifest too, and the entry script
(code/inference.py) runs before the check. Entries must be relative paths inside the
model dir (no absolute paths, no '..', no links out of it).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

MANIFEST_NAME = "manifest.json"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)  # 1: a single "weights" file instead of "artifacts"


class ArchiveError(RuntimeError):
    """The model directory is not a usable smvision archive (a fault at load, not a request)."""


@dataclass
class Manifest:
    """What an archive holds: kind, configuration, artifacts by role, and file digests."""

    kind: str
    config: dict[str, Any]
    artifacts: dict[str, str]  # role -> relative path, e.g. {"encoder": "sam_encoder.pth"}
    random_weights: bool
    files: dict[str, str] = field(default_factory=dict)  # relative path -> sha256
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def weights(self) -> str | None:
        """The "weights" artifact (the one file of a format-1 archive), if any."""
        return self.artifacts.get("weights")

    def artifact(self, model_dir: str | Path, role: str) -> Path:
        """The path of the artifact with this role, or an ArchiveError naming the roles there are."""
        name = self.artifacts.get(role)
        if not name:
            held = ", ".join(sorted(self.artifacts)) or "none"
            raise ArchiveError(f"the {self.kind} archive at {model_dir} has no {role!r} artifact (it has: {held})")
        return check_entry(Path(model_dir), name)

    def to_json(self) -> str:
        document = {
            "format_version": FORMAT_VERSION,
            "kind": self.kind,
            "config": self.config,
            "artifacts": dict(sorted(self.artifacts.items())),
            "random_weights": self.random_weights,
            **self.extra,
            "files": dict(sorted(self.files.items())),
        }
        return json.dumps(document, indent=2) + "\n"


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def digest_tree(root: Path) -> dict[str, str]:
    """sha256 of every file under root (except the manifest), keyed by relative POSIX path."""
    return {
        path.relative_to(root).as_posix(): sha256_of(path)
        for path in sorted(root.rglob("*"))
        if path.is_file() and path.name != MANIFEST_NAME and "__pycache__" not in path.parts
    }


def read_manifest(model_dir: str | Path, verify: bool = True) -> Manifest:
    """Read <model_dir>/manifest.json and, by default, check every listed file's sha256."""
    root = Path(model_dir)
    path = root / MANIFEST_NAME
    if not path.is_file():
        raise ArchiveError(f"{path} is missing: build the archive with `smvision archive build`")
    try:
        document = json.loads(path.read_text())
        version = document.get("format_version")
        if version not in READABLE_VERSIONS:
            readable = " and ".join(map(str, READABLE_VERSIONS))
            raise ArchiveError(f"{path}: format_version {version!r}; this smvision reads {readable}")
        manifest = Manifest(
            kind=document["kind"],
            config=document["config"],
            artifacts=_artifacts(document),
            random_weights=bool(document.get("random_weights", False)),
            files=dict(document["files"]),
            extra={k: v for k, v in document.items() if k not in _CORE_FIELDS},
        )
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ArchiveError(f"{path} is not a valid manifest: {exc}") from None
    if verify:
        verify_files(root, manifest)
    return manifest


_CORE_FIELDS = {"format_version", "kind", "config", "artifacts", "weights", "random_weights", "files"}


def _artifacts(document: dict[str, Any]) -> dict[str, str]:
    """Format 2's "artifacts", or format 1's single "weights" file as {"weights": file}."""
    if "artifacts" in document:
        artifacts = document["artifacts"]
        if not isinstance(artifacts, dict) or not all(isinstance(v, str) for v in artifacts.values()):
            raise TypeError("'artifacts' must map each role to a file name")
        return dict(artifacts)
    weights = document.get("weights")
    return {"weights": weights} if weights else {}


def check_entry(root: Path, name: str) -> Path:
    """The file a manifest entry names, or ArchiveError if the entry points anywhere but
    inside root (an absolute path, '..', a backslash, a link out of it)."""
    pure = PurePosixPath(name)
    if not name or pure.is_absolute() or ".." in pure.parts or "\\" in name:
        raise ArchiveError(f"manifest entry {name!r} is not a relative path inside the model dir")
    path = root / pure
    try:
        path.resolve().relative_to(root.resolve())
    except ValueError:
        raise ArchiveError(f"manifest entry {name!r} leads outside the model dir") from None
    return path


def verify_files(root: Path, manifest: Manifest) -> None:
    """Raise ArchiveError naming every listed file that is missing or changed, or any
    entry that is not a path inside root (checked before any file is touched)."""
    paths = {name: check_entry(root, name) for name in manifest.files}
    problems = []
    for name, expected in manifest.files.items():
        path = paths[name]
        if not path.is_file():
            problems.append(f"{name} is missing")
        elif sha256_of(path) != expected:
            problems.append(f"{name} has changed (sha256 differs from the manifest)")
    if problems:
        raise ArchiveError(f"archive at {root} does not match its manifest: " + "; ".join(problems))
