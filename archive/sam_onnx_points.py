"""SAM's prompt encoder + mask decoder as a batched .onnx graph, for "everything" masks.

SamAutomaticMaskGenerator asks the decoder for one mask set per grid point, many points
at a time (points_per_batch). The served decoder graph (smvision.archive.sam_onnx) takes
one prompt per run; this one takes B prompts of N points each on one image embedding
and runs them as one batch, exactly as SamPredictor.predict_torch does:

  inputs   image_embeddings (1, 256, 64, 64), point_coords (B, N, 2) (through
           ResizeLongestSide), point_labels (B, N) (1 fg, 0 bg, -1 padding)
  outputs  iou_predictions (B, 4), low_res_masks (B, 4, 256, 256)

No mask_input (the generator uses none); masks [:, 1:] are the multimask answer.
"""

from __future__ import annotations

from pathlib import Path

import torch
from segment_anything.modeling import Sam

from smvision.archive.sam_onnx import LowResSamOnnxModel, export_onnx
from smvision.models.sam.build import EMBEDDING_SHAPE


class PointBatchSamOnnxModel(LowResSamOnnxModel):
    """B point prompts on one image embedding -> B sets of four low-res masks and scores:
    the served decoder's re-associated maths (LowResSamOnnxModel.decode), B prompts per
    run, the no-mask dense embedding (the generator gives no mask)."""

    @torch.no_grad()
    def forward(  # type: ignore[override]
        self, image_embeddings: torch.Tensor, point_coords: torch.Tensor, point_labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        no_mask = self.model.prompt_encoder.no_mask_embed.weight  # (1, C)
        return self.decode(image_embeddings, self._embed_points(point_coords, point_labels), no_mask)


def export_sam_point_batch_decoder(sam: Sam, output: Path, quantize: bool = False) -> Path:
    """Write the batched decoder to output (one .onnx file, opset 17, any B and N);
    quantize: dynamic int8 weights, as for the served decoder."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    model = PointBatchSamOnnxModel(sam.cpu().eval())
    generator = torch.Generator().manual_seed(0)
    inputs = {
        "image_embeddings": torch.randn(*EMBEDDING_SHAPE, generator=generator),
        "point_coords": torch.randint(0, 1024, (3, 2, 2), generator=generator).float(),
        "point_labels": torch.tensor([[1.0, -1.0]] * 3),
    }
    dynamic_axes = {
        "point_coords": {0: "prompts", 1: "num_points"},
        "point_labels": {0: "prompts", 1: "num_points"},
        "iou_predictions": {0: "prompts"},
        "low_res_masks": {0: "prompts"},
    }
    return export_onnx(model, inputs, ["iou_predictions", "low_res_masks"], dynamic_axes, output, quantize)
