"""SAM's prompt encoder + mask decoder as one .onnx file (segment_anything.utils.onnx).

segment-anything 1.0's SamOnnxModel crops the upscaled masks with Python ints taken from
a tensor: under torch 2.14 the default exporter fails on it, and the legacy one bakes the
example's crop into the graph (wrong masks for every other aspect ratio; upstream issues
#56 / #130, fixed on main after 1.0). Slicing with int64 tensors fixes both.

Two graphs, same inputs (image_embeddings, point_coords (1, N, 2), point_labels (1, N),
mask_input, has_mask_input[, orig_im_size]):
- low-res (default, what smvision serves): outputs iou_predictions (1, 4) and
  low_res_masks (1, 4, 256, 256); SamDecoder upsamples only the masks asked for.
- upsample=True: the upstream graph (plus `masks`, logits at the original size).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from segment_anything.modeling import Sam
from segment_anything.utils.onnx import SamOnnxModel

OPSET = 17
EMBEDDING_SHAPE = (1, 256, 64, 64)


class FixedSamOnnxModel(SamOnnxModel):
    """The upstream export model with the crop done by int64 tensors (any aspect ratio)."""

    def mask_postprocessing(self, masks: torch.Tensor, orig_im_size: torch.Tensor) -> torch.Tensor:
        masks = torch.nn.functional.interpolate(
            masks, size=(self.img_size, self.img_size), mode="bilinear", align_corners=False
        )
        prepadded_size = self.resize_longest_image_size(orig_im_size, self.img_size).to(torch.int64)
        masks = masks[..., : prepadded_size[0], : prepadded_size[1]]
        orig_im_size = orig_im_size.to(torch.int64)
        h, w = orig_im_size[0], orig_im_size[1]
        return torch.nn.functional.interpolate(masks, size=(h, w), mode="bilinear", align_corners=False)


class LowResSamOnnxModel(SamOnnxModel):
    """Prompt encoder + mask decoder only: scores and 256x256 logits for all four masks."""

    def __init__(self, model: Sam) -> None:
        super().__init__(model, return_single_mask=False)

    @torch.no_grad()
    def forward(  # type: ignore[override]
        self,
        image_embeddings: torch.Tensor,
        point_coords: torch.Tensor,
        point_labels: torch.Tensor,
        mask_input: torch.Tensor,
        has_mask_input: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        masks, scores = self.model.mask_decoder.predict_masks(
            image_embeddings=image_embeddings,
            image_pe=self.model.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=self._embed_points(point_coords, point_labels),
            dense_prompt_embeddings=self._embed_masks(mask_input, has_mask_input),
        )
        return scores, masks


def example_inputs(sam: Sam, upsample: bool) -> dict[str, torch.Tensor]:
    """Inputs of the right shapes to trace with (3 points; a non-square image)."""
    generator = torch.Generator().manual_seed(0)
    mask_size = [4 * s for s in sam.prompt_encoder.image_embedding_size]
    inputs = {
        "image_embeddings": torch.randn(*EMBEDDING_SHAPE, generator=generator),
        "point_coords": torch.randint(0, 1024, (1, 3, 2), generator=generator).float(),
        "point_labels": torch.tensor([[1.0, 0.0, -1.0]]),
        "mask_input": torch.randn(1, 1, *mask_size, generator=generator),
        "has_mask_input": torch.tensor([1.0]),
    }
    if upsample:
        inputs["orig_im_size"] = torch.tensor([1500.0, 2250.0])
    return inputs


def export_sam_decoder(sam: Sam, output: Path, quantize: bool = False, upsample: bool = False) -> Path:
    """Write SAM's prompt encoder + mask decoder to output (one .onnx file, opset 17,
    any point count); quantize: dynamic int8 weights (onnxruntime.quantization).
    upsample: also output `masks` at orig_im_size, as the upstream export does."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    sam = sam.cpu().eval()
    model = FixedSamOnnxModel(sam, return_single_mask=False) if upsample else LowResSamOnnxModel(sam)
    inputs = example_inputs(sam, upsample)
    outputs = ["masks", "iou_predictions", "low_res_masks"] if upsample else ["iou_predictions", "low_res_masks"]
    dynamic_axes = {"point_coords": {1: "num_points"}, "point_labels": {1: "num_points"}}
    if upsample:
        dynamic_axes["masks"] = {2: "height", 3: "width"}
    with tempfile.TemporaryDirectory() as scratch:
        target = Path(scratch) / "fp32.onnx" if quantize else output
        torch.onnx.export(
            model,
            tuple(inputs.values()),
            str(target),
            input_names=list(inputs),
            output_names=outputs,
            dynamic_axes=dynamic_axes,
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )
        if quantize:
            _quantize(target, output)
    return output


def _quantize(source: Path, output: Path) -> None:
    """Dynamic int8 weights; masks stay within about 1e-2 of fp32 logits."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model = onnx.load(str(source))
    del model.graph.value_info[:]  # stale shapes confuse the quantizer's shape inference
    cleaned = source.with_name("clean.onnx")
    onnx.save(model, str(cleaned))
    quantize_dynamic(str(cleaned), str(output), weight_type=QuantType.QUInt8)
