"""What goes into our serving image: the Dockerfile, the files its COPY lines take, their digest.

`smvision image build|push` builds Dockerfile.cpu or Dockerfile.gpu from a source checkout.
The image's tag is `<processor>-<package version>-<digest>`: the digest (sha256, first 12
hex digits) covers the Dockerfile, .dockerignore and every file its COPY instructions take
from the build context (setup.cfg's package folders, pyproject.toml, setup.cfg, README.md,
requirements.txt), minus what .dockerignore excludes: the same inputs give the same tag on
any machine, any change to them a new one. The same file list is the build context that
`--remote` zips for CodeBuild.
"""

from __future__ import annotations

import configparser
import fnmatch
import hashlib
import io
import os
import re
import shlex
import zipfile
from dataclasses import dataclass
from pathlib import Path

PROCESSORS = ("cpu", "gpu")
#: SageMaker's ml.* instances (other than Graviton, Inferentia, Trainium) are x86_64; the
#: image is built for that whatever machine builds it (an Apple-silicon laptop builds arm64
#: by default, which SageMaker cannot start)
PLATFORM = "linux/amd64"
DIGEST_CHARS = 12
_ZIP_TIME = (2020, 1, 1, 0, 0, 0)


class ContextError(ValueError):
    """No usable build context (not a source checkout, no such Dockerfile); the message says what to do."""


@dataclass(frozen=True)
class BuildContext:
    """A Dockerfile and the files it takes, from one source checkout."""

    root: Path
    processor: str
    version: str
    files: tuple[str, ...]  # paths relative to root, POSIX, sorted; the Dockerfile and .dockerignore included
    digest: str  # sha256 hex over every file's path and bytes

    @property
    def dockerfile(self) -> str:
        return dockerfile_name(self.processor)

    @property
    def tag(self) -> str:
        """`<processor>-<version>-<digest>`, e.g. cpu-0.1.0-3f2a9c1b7d4e (a valid ECR tag)."""
        version = re.sub(r"[^A-Za-z0-9_.-]", "-", self.version)
        return f"{self.processor}-{version}-{self.digest[:DIGEST_CHARS]}"

    @property
    def labels(self) -> dict[str, str]:
        """OCI labels the build adds, so an image traces back to its inputs."""
        return {"org.opencontainers.image.version": self.version,
                "org.opencontainers.image.revision": self.digest}

    def zip_bytes(self) -> bytes:
        """The build context as a zip (fixed times and modes: the same files give the same bytes)."""
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for name in self.files:
                info = zipfile.ZipInfo(name, date_time=_ZIP_TIME)
                info.external_attr = 0o644 << 16
                info.compress_type = zipfile.ZIP_DEFLATED
                archive.writestr(info, (self.root / name).read_bytes())
        return buffer.getvalue()


def dockerfile_name(processor: str) -> str:
    if processor not in PROCESSORS:
        raise ValueError(f"the image is cpu or gpu, got {processor!r}")
    return f"Dockerfile.{processor}"


def find_root(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The source checkout to build from: explicit, else the checkout this smvision is
    installed from (an editable install, as `make install` makes), else the current folder."""
    candidates = [Path(explicit)] if explicit else [Path(__file__).resolve().parent.parent, Path.cwd()]
    for candidate in candidates:
        if (candidate / "Dockerfile.cpu").is_file() and (candidate / "setup.cfg").is_file():
            return candidate.resolve()
    where = str(candidates[0]) if explicit else "this smvision's install or the current folder"
    raise ContextError(
        f"no smvision source checkout at {where} (Dockerfile.cpu, setup.cfg and the code they copy): "
        "clone the repository and run the command there, or pass --context DIR"
    )


def copy_sources(dockerfile_text: str) -> list[str]:
    """The build-context paths a Dockerfile's COPY/ADD instructions take (not `--from=` stages)."""
    sources: list[str] = []
    logical = ""
    for raw in dockerfile_text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            logical += line[:-1] + " "
            continue
        logical += line
        words = shlex.split(logical)
        logical = ""
        if not words or words[0].upper() not in ("COPY", "ADD"):
            continue
        arguments = words[1:]
        if any(word.startswith("--from=") for word in arguments):
            continue
        paths = [word for word in arguments if not word.startswith("--")]
        sources += [path.rstrip("/") or "." for path in paths[:-1]]
    return sources


Rule = tuple[bool, tuple[str, ...]]  # (excludes?, the pattern's path segments)


def _matches(pattern: tuple[str, ...], parts: tuple[str, ...]) -> bool:
    """Segment-wise match of a .dockerignore pattern: `*` and `?` stay within a segment,
    `**` spans any number of them."""
    if not pattern:
        return not parts
    head, rest = pattern[0], pattern[1:]
    if head == "**":
        return any(_matches(rest, parts[skip:]) for skip in range(len(parts) + 1))
    return bool(parts) and fnmatch.fnmatchcase(parts[0], head) and _matches(rest, parts[1:])


def read_dockerignore(root: Path) -> list[Rule]:
    """One rule per pattern of root/.dockerignore; `!pattern` lines re-include."""
    path = root / ".dockerignore"
    rules: list[Rule] = []
    if path.is_file():
        for line in path.read_text().splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            include = line.startswith("!")
            segments = tuple(s for s in line.lstrip("!").strip().split("/") if s not in ("", "."))
            rules.append((not include, segments))
    return rules


def ignored(relative: str, rules: list[Rule]) -> bool:
    """Whether .dockerignore keeps relative (or a folder above it) out of the context; the last match wins."""
    parts = tuple(relative.split("/"))
    excluded = False
    for exclude, pattern in rules:
        if any(_matches(pattern, parts[:count]) for count in range(1, len(parts) + 1)):
            excluded = exclude
    return excluded


def package_version(root: Path) -> str:
    """setup.cfg's version: what `pip install .` in the image installs."""
    parser = configparser.ConfigParser()
    parser.read(root / "setup.cfg")
    try:
        return parser["metadata"]["version"].strip()
    except KeyError:
        raise ContextError(f"{root / 'setup.cfg'} has no [metadata] version") from None


def load(root: Path, processor: str) -> BuildContext:
    """The build context of Dockerfile.<processor> in the checkout at root."""
    dockerfile = dockerfile_name(processor)
    path = root / dockerfile
    if not path.is_file():
        raise ContextError(f"{path} does not exist")
    rules = read_dockerignore(root)
    names = {dockerfile} | ({".dockerignore"} if (root / ".dockerignore").is_file() else set())
    for source in copy_sources(path.read_text()):
        target = root / source
        if not target.exists():
            raise ContextError(f"{dockerfile} copies {source}, which is not in {root}")
        found = [target] if target.is_file() else sorted(p for p in target.rglob("*") if p.is_file())
        for file in found:
            relative = file.relative_to(root).as_posix()
            if not ignored(relative, rules) and "__pycache__" not in file.parts and file.suffix != ".pyc":
                names.add(relative)
    files = tuple(sorted(names))
    digest = hashlib.sha256()
    for name in files:
        data = (root / name).read_bytes()
        digest.update(f"{name}\0{len(data)}\0".encode())
        digest.update(data)
    digest.update(f"platform\0{PLATFORM}".encode())
    return BuildContext(root, processor, package_version(root), files, digest.hexdigest())
