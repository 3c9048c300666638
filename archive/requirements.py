"""code/requirements.txt, written per model kind.

The AWS PyTorch 2.6 inference image pip-installs an archive's code/requirements.txt at
every start (it needs network or a CodeArtifact mirror to do so). The image already has
torch 2.6.0, torchvision 0.21.0, numpy, pillow and boto3, which is everything else
code/ imports; each kind lists only what it imports beyond those, so an EfficientDet
archive does not pull in ONNX Runtime and a sam-encode archive does not pull in
pycocotools. Each kind's lines are in its row (smvision.kinds.KINDS); pins equal the
repository's requirements.txt (a test checks): pins of torch & co. would replace the
image's own builds, so they never appear there.
"""

from __future__ import annotations

from typing import Iterable

from smvision.artifacts import ONNX
from smvision.kinds import KINDS

HEADER = """\
# Installed by the AWS PyTorch 2.6 inference image (sagemaker-pytorch-inference) at every
# start; written by `smvision archive build {kind}`. The image already has torch,
# torchvision, numpy, pillow and boto3: only what a {kind} archive imports beyond those.
"""


#: artifact role -> what serving it needs, whatever the kind (EfficientDet's ONNX export)
ARTIFACT_REQUIREMENTS: dict[str, tuple[str, ...]] = {ONNX: ("onnxruntime==1.31.1",)}

#: kind -> its code/requirements.txt lines (from the registry rows)
KIND_REQUIREMENTS: dict[str, tuple[str, ...]] = {name: kind.requirements for name, kind in KINDS.items()}


def requirements_for(kind: str, roles: Iterable[str] = ()) -> tuple[str, ...]:
    """The pinned requirements of one kind, plus those its artifact roles need (KeyError
    names the known kinds)."""
    try:
        lines = list(KIND_REQUIREMENTS[kind])
    except KeyError:
        raise KeyError(f"no requirements for kind {kind!r}; known: {', '.join(KIND_REQUIREMENTS)}") from None
    for role in sorted(roles):
        lines += [line for line in ARTIFACT_REQUIREMENTS.get(role, ()) if line not in lines]
    return tuple(lines)


def requirements_txt(kind: str, roles: Iterable[str] = ()) -> str:
    """The text of code/requirements.txt for an archive of this kind holding these artifact roles."""
    return HEADER.format(kind=kind) + "".join(line + "\n" for line in requirements_for(kind, roles))


def all_requirements() -> list[str]:
    """Every kind's requirements, once each, sorted (what the toolkit test venv preinstalls)."""
    return sorted({line for lines in KIND_REQUIREMENTS.values() for line in lines})


if __name__ == "__main__":  # `python -m smvision.archive.requirements`: the union, one per line
    print("\n".join(all_requirements()))
