"""Write model.tar.gz: the kind's artifacts, code/, code/requirements.txt and manifest.json.

One format for every model kind. The tarball is reproducible: sorted entries, fixed
owner and timestamps, so the same inputs give the same bytes.
"""

from __future__ import annotations

import gzip
import shutil
import tarfile
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import smvision
from smvision.archive.requirements import requirements_txt
from smvision.manifest import MANIFEST_NAME, Manifest, digest_tree

#: where the entry script and the runtime package live in a source checkout
CODE_DIR = Path(smvision.__file__).resolve().parent.parent
ENTRY_SCRIPT = "inference.py"
REQUIREMENTS = "requirements.txt"


def code_dir() -> Path:
    """The project's code/ folder (entry script, runtime package, requirements)."""
    if not (CODE_DIR / ENTRY_SCRIPT).is_file():
        raise FileNotFoundError(
            f"{CODE_DIR / ENTRY_SCRIPT} not found: building archives needs a source checkout "
            "installed with `pip install -e .`"
        )
    return CODE_DIR


def copy_code(destination: Path, kind: str, roles: Iterable[str] = ()) -> None:
    """Copy code/inference.py and code/smvision/ into destination/code, and write the
    code/requirements.txt of the kind and its artifact roles."""
    source = code_dir()
    target = destination / "code"
    target.mkdir(parents=True)
    shutil.copy2(source / ENTRY_SCRIPT, target / ENTRY_SCRIPT)
    (target / REQUIREMENTS).write_text(requirements_txt(kind, roles))
    shutil.copytree(source / "smvision", target / "smvision", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


def build_archive(
    output: str | Path,
    kind: str,
    config: dict[str, Any],
    write_payload: Callable[[Path], Mapping[str, str]],
    random_weights: bool,
    extra: dict[str, Any] | None = None,
    packer: Callable[[Path, Path], None] | None = None,
) -> Path:
    """Stage an archive and pack it to output.

    write_payload(stage_dir) writes the kind's files (weights, class names, an .onnx,
    ...) and returns its artifacts: role -> relative name (e.g. {"weights": "model.pth"}).
    packer(stage_dir, output) turns the staged folder into the output file: by default
    `pack` (model.tar.gz); smvision.archive.mar packs the same stage as a TorchServe .mar.
    Returns the output path.
    """
    output = Path(output)
    with tempfile.TemporaryDirectory(prefix="smvision-archive-") as tmp:
        stage = Path(tmp)
        artifacts = dict(write_payload(stage))
        copy_code(stage, kind, artifacts)
        manifest = Manifest(
            kind=kind,
            config=config,
            artifacts=artifacts,
            random_weights=random_weights,
            files=digest_tree(stage),
            extra={"smvision_version": smvision.__version__, **(extra or {})},
        )
        (stage / MANIFEST_NAME).write_text(manifest.to_json())
        output.parent.mkdir(parents=True, exist_ok=True)
        (packer or pack)(stage, output)
    return output


def pack(stage: Path, output: Path) -> None:
    """tar.gz the stage's contents at the archive root, reproducibly."""
    buffer = output.with_name(output.name + ".partial")
    with open(buffer, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as zipped:
        with tarfile.open(fileobj=zipped, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for path in sorted(stage.rglob("*")):
                info = tar.gettarinfo(str(path), arcname=path.relative_to(stage).as_posix())
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                info.mtime = 0
                info.mode = 0o755 if path.is_dir() else 0o644
                if path.is_file():
                    with open(path, "rb") as handle:
                        tar.addfile(info, handle)
                else:
                    tar.addfile(info)
    buffer.replace(output)


def extract_archive(archive: str | Path, destination: str | Path) -> Path:
    """Unpack model.tar.gz into destination (refusing paths that escape it)."""
    destination = Path(destination)
    destination.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "r:gz") as tar:
        tar.extractall(destination, filter="data")
    return destination


def archive_members(archive: str | Path) -> list[str]:
    """Names of the files inside an archive."""
    with tarfile.open(archive, "r:gz") as tar:
        return [member.name for member in tar.getmembers() if member.isfile()]


def read_member(archive: str | Path, name: str) -> bytes:
    """One file's bytes from inside an archive."""
    with tarfile.open(archive, "r:gz") as tar:
        member = tar.extractfile(name)
        if member is None:
            raise KeyError(name)
        return member.read()


__all__ = ["build_archive", "copy_code", "extract_archive", "archive_members", "read_member"]
