"""code/requirements.txt, written per model kind.

The AWS PyTorch 2.6 inference image pip-installs an archive's code/requirements.txt at
every start (it needs network or a CodeArtifact mirror to do so). The image already has
torch 2.6.0, torchvision 0.21.0, numpy, pillow and boto3, which is everything else
code/ imports; each kind lists only what it imports beyond those, so an EfficientDet
archive does not pull in ONNX Runtime and a sam-encode archive does not pull in
pycocotools. Pins equal the repository's requirements.txt (a test checks): pins of
torch & co. would replace the image's own builds, so they never appear here.
"""

from __future__ import annotations

from typing import Iterable

#: model kind -> the distributions its code/ imports that the AWS 2.6 image lacks
KIND_REQUIREMENTS: dict[str, tuple[str, ...]] = {
    "efficientdet": ("efficientnet_pytorch==0.7.1",),
    # segment_anything's modules (the image encoder) and ResizeLongestSide
    # pybase64: base64 of 4 MB embeddings in about 1 ms (the standard library: 12 ms)
    "sam-encode": ("segment-anything==1.0", "pybase64==1.5.1"),
    # ONNX Runtime for the decoder, ResizeLongestSide for prompt coordinates;
    # pycocotools for RLE masks, OpenCV for polygons, rasterio + shapely for GeoJSON
    "sam-decode": (
        "onnxruntime==1.31.1",
        "segment-anything==1.0",
        "pycocotools==2.0.11",
        "opencv-python-headless==5.0.0.93",
        "pybase64==1.5.1",
        "rasterio==1.4.4",
        "shapely==2.2.0",
    ),
    "sam": (
        "segment-anything==1.0",
        "onnxruntime==1.31.1",
        "pycocotools==2.0.11",
        "opencv-python-headless==5.0.0.93",
        "pybase64==1.5.1",
        "rasterio==1.4.4",
        "shapely==2.2.0",
    ),
}

HEADER = """\
# Installed by the AWS PyTorch 2.6 inference image (sagemaker-pytorch-inference) at every
# start; written by `smvision archive build {kind}`. The image already has torch,
# torchvision, numpy, pillow and boto3: only what a {kind} archive imports beyond those.
"""


#: artifact role -> what serving it needs, whatever the kind (EfficientDet's ONNX export)
ARTIFACT_REQUIREMENTS: dict[str, tuple[str, ...]] = {"onnx": ("onnxruntime==1.31.1",)}


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
