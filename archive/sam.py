"""Build the three SAM archives from an official checkpoint (or random weights, for demos).

- sam-encode: the image encoder's weights, {"encoder": "sam_image_encoder.pth"}
- sam-decode: the prompt encoder + mask decoder as ONNX, {"decoder": "sam_decoder.onnx"},
              and the same decoder batched over point prompts for "everything" masks,
              {"points_decoder": "sam_points_decoder.onnx"}
- sam:        all three, for the one-call kind (encode with a cache, then decode)

The manifest's config names the model type ({"model_type": "vit_b", ...}); the kinds build
the architecture from smvision.models.sam.build's table. `vit_tiny_test` is the CI-sized
SAM (random weights from a fixed seed) that tests and the demo use.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

from smvision.archive.build import build_archive
from smvision.artifacts import DECODER, ENCODER, POINTS_DECODER
from smvision.kinds import KINDS

log = logging.getLogger("smvision")

#: the kinds whose archives this module builds (their rows name the "sam" builder)
SAM_KINDS = tuple(name for name, kind in KINDS.items() if kind.builder == "sam")
ENCODER_FILE = "sam_image_encoder.pth"
DECODER_FILE = "sam_decoder.onnx"
POINTS_DECODER_FILE = "sam_points_decoder.onnx"


def build_sam_archive(
    output: str | Path,
    kind: str,
    model_type: str,
    checkpoint: str | Path | None = None,
    quantize: bool = False,
    seed: int = 0,
    packer: Callable[[Path, Path], None] | None = None,
) -> Path:
    """Write a model.tar.gz of kind (sam-encode | sam-decode | sam) for model_type.

    checkpoint: an official SAM checkpoint (sam_vit_b_01ec64.pth, ...), checked against
    model_type before anything is written; None: random weights (seeded), said loudly.
    quantize: dynamic int8 decoder weights (sam-decode and sam only).
    packer: how the staged folder becomes the output (default model.tar.gz; see
    smvision.archive.mar for the TorchServe .mar).
    """
    import torch

    from smvision.models.sam.build import build_sam, load_sam_checkpoint, sam_config

    if kind not in SAM_KINDS:
        raise ValueError(f"unknown SAM archive kind {kind!r}; use one of {', '.join(SAM_KINDS)}")
    roles = KINDS[kind].roles
    if quantize and DECODER not in roles:
        raise ValueError("--quantize applies to the ONNX decoder: sam-decode and sam archives only")
    config = sam_config(model_type)
    if checkpoint is None:
        torch.manual_seed(seed)
        sam = build_sam(config)
        log.warning(
            "!!! No --checkpoint given: %s %s archive with RANDOMLY INITIALISED weights (seed %d). "
            "Its embeddings and masks are noise: for demos and tests only. !!!",
            kind,
            model_type,
            seed,
        )
    else:
        sam = load_sam_checkpoint(str(checkpoint), config)

    def write_payload(stage: Path) -> dict[str, str]:
        artifacts = {}
        if ENCODER in roles:
            torch.save(sam.image_encoder.state_dict(), stage / ENCODER_FILE)
            artifacts[ENCODER] = ENCODER_FILE
        if DECODER in roles:
            from smvision.archive.sam_onnx import export_sam_decoder

            export_sam_decoder(sam, stage / DECODER_FILE, quantize=quantize)
            artifacts[DECODER] = DECODER_FILE
        if POINTS_DECODER in roles:
            from smvision.archive.sam_onnx_points import export_sam_point_batch_decoder

            export_sam_point_batch_decoder(sam, stage / POINTS_DECODER_FILE, quantize=quantize)
            artifacts[POINTS_DECODER] = POINTS_DECODER_FILE
        return artifacts

    archive_config = {"model_type": model_type}
    if DECODER in roles:
        archive_config["decoder_quantized"] = quantize
    return build_archive(
        output,
        kind=kind,
        config=archive_config,
        write_payload=write_payload,
        random_weights=checkpoint is None,
        extra={"source_checkpoint": Path(checkpoint).name if checkpoint else None},
        packer=packer,
    )
