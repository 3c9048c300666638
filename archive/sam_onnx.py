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

import math
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
    """Prompt encoder + mask decoder only: scores and 256x256 logits for all four masks,
    the same maths as MaskDecoder.predict_masks re-associated to do less of it:

    - attention: token->image scores as (q Wk) . keys and outputs as (attn . values) Wv
      (the key bias drops out of the softmax; attention rows sum to 1), image->token as
      keys . (Wq k) and attn . (v Wo): no projection of the 4096 image tokens at all
      (about 2.3x fewer multiply-adds in the transformer);
    - the stride-2 transposed convolutions of output_upscaling as plain matrix products in
      sub-pixel order, with the hypernetwork product done before the one pixel shuffle;
    - the 4096 image tokens stay (tokens, channels) from start to end.
    """

    def __init__(self, model: Sam) -> None:
        super().__init__(model, return_single_mask=False)
        decoder, prompt_encoder = model.mask_decoder, model.prompt_encoder
        self.register_buffer("image_pe", prompt_encoder.get_dense_pe()[0].flatten(1).T.contiguous())
        self.register_buffer("output_tokens", torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight]))

    @torch.no_grad()
    def forward(  # type: ignore[override]
        self,
        image_embeddings: torch.Tensor,
        point_coords: torch.Tensor,
        point_labels: torch.Tensor,
        mask_input: torch.Tensor,
        has_mask_input: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        decoder = self.model.mask_decoder
        transformer = decoder.transformer
        prompt_pe = torch.cat([self.output_tokens, self._embed_points(point_coords, point_labels)[0]])
        channels = image_embeddings.shape[1]
        keys = self._dense_embedding(image_embeddings.reshape(channels, -1).T, mask_input, has_mask_input)
        queries = prompt_pe
        for layer in transformer.layers:
            if layer.skip_first_layer_pe:
                queries = layer.self_attn(queries[None], queries[None], queries[None])[0]
            else:
                q = (queries + prompt_pe)[None]
                queries = queries + layer.self_attn(q, q, queries[None])[0]
            queries = layer.norm1(queries)
            attended = _token_to_image(layer.cross_attn_token_to_image, queries + prompt_pe, keys + self.image_pe, keys)
            queries = layer.norm2(queries + attended)
            queries = layer.norm3(queries + layer.mlp(queries))
            attended = _image_to_token(layer.cross_attn_image_to_token, keys + self.image_pe, queries + prompt_pe, queries)
            keys = layer.norm4(keys + attended)
        attended = _token_to_image(transformer.final_attn_token_to_image, queries + prompt_pe, keys + self.image_pe, keys)
        queries = transformer.norm_final_attn(queries + attended)
        hyper = torch.stack([mlp(queries[1 + i]) for i, mlp in enumerate(decoder.output_hypernetworks_mlps)])
        scores = decoder.iou_prediction_head(queries[0])[None]
        return scores, self._upscale(keys, hyper)

    def _dense_embedding(self, image: torch.Tensor, mask_input: torch.Tensor, has_mask_input: torch.Tensor) -> torch.Tensor:
        """image (4096, 256) + the dense prompt embedding: mask_downscaling(mask_input) when
        has_mask_input is 1, else no_mask_embed; has_mask_input is applied to the 16-channel
        hidden layer and the bias rather than to the 256-channel output."""
        conv1, norm1, act1, conv2, norm2, act2, conv3 = self.model.prompt_encoder.mask_downscaling
        side = self.model.prompt_encoder.image_embedding_size[0]
        # mask row 4y + 2a + c, column 4x + 2b + d -> (y, x, a, b, c, d)
        blocks = mask_input.reshape(side, 2, 2, side, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(-1, 4)
        hidden = blocks @ conv1.weight.reshape(-1, 4).T + conv1.bias
        hidden = act1(torch.nn.functional.layer_norm(hidden, (hidden.shape[-1],), norm1.weight, norm1.bias, norm1.eps))
        hidden = hidden.reshape(side * side, -1) @ conv2.weight.permute(2, 3, 1, 0).reshape(-1, conv2.out_channels) + conv2.bias
        hidden = act2(torch.nn.functional.layer_norm(hidden, (hidden.shape[-1],), norm2.weight, norm2.bias, norm2.eps))
        no_mask = self.model.prompt_encoder.no_mask_embed.weight[0]
        bias = has_mask_input * conv3.bias + (1 - has_mask_input) * no_mask
        return torch.addmm(image + bias, has_mask_input * hidden, conv3.weight.flatten(1).T)

    def _upscale(self, tokens: torch.Tensor, hyper: torch.Tensor) -> torch.Tensor:
        """output_upscaling then hyper . pixels: (4096, 256) tokens -> (1, 4, 256, 256)."""
        up1, norm, act1, up2, act2 = self.model.mask_decoder.output_upscaling
        side = self.model.prompt_encoder.image_embedding_size[0]
        # ConvTranspose2d(k=2, s=2): every input pixel -> 2x2 outputs, a matrix product.
        hidden = tokens @ up1.weight.permute(0, 2, 3, 1).flatten(1) + up1.bias.repeat(4)
        hidden = hidden.reshape(-1, up1.out_channels)
        hidden = act1(torch.nn.functional.layer_norm(hidden, (up1.out_channels,), norm.weight, norm.bias, norm.eps))
        hidden = hidden @ up2.weight.permute(0, 2, 3, 1).flatten(1) + up2.bias.repeat(4)
        hidden = act2(hidden.reshape(-1, up2.out_channels))
        masks = hyper @ hidden.T  # columns: (y, x, a, b, c, d) for pixel (4y + 2a + c, 4x + 2b + d)
        count = hyper.shape[0]
        masks = masks.reshape(count, side, side, 2, 2, 2, 2).permute(0, 1, 3, 5, 2, 4, 6)
        return masks.reshape(1, count, 4 * side, 4 * side)


def _token_to_image(attention, queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Attention(q=queries (T, C), k=keys (4096, C), v=values) without projecting keys or values."""
    heads = attention.num_heads
    head_dim = attention.internal_dim // heads
    channels = keys.shape[-1]
    q = attention.q_proj(queries).reshape(-1, heads, head_dim).transpose(0, 1)  # (H, T, d)
    q_keys = q @ attention.k_proj.weight.reshape(heads, head_dim, channels)  # (H, T, C)
    weights = torch.softmax((q_keys / math.sqrt(head_dim)) @ keys.T, dim=-1)  # (H, T, 4096)
    mixed = weights @ values  # (H, T, C)
    out = mixed @ attention.v_proj.weight.reshape(heads, head_dim, channels).transpose(1, 2)
    out = out + attention.v_proj.bias.reshape(heads, 1, head_dim)
    return attention.out_proj(out.transpose(0, 1).reshape(-1, heads * head_dim))


def _image_to_token(attention, queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Attention(q=queries (4096, C), k=keys (T, C), v=values) without projecting the queries
    nor running out_proj over 4096 rows."""
    heads = attention.num_heads
    head_dim = attention.internal_dim // heads
    channels = queries.shape[-1]
    tokens = keys.shape[0]
    k = attention.k_proj(keys).reshape(tokens, heads, head_dim).transpose(0, 1)  # (H, T, d)
    v = attention.v_proj(values).reshape(tokens, heads, head_dim).transpose(0, 1)
    w_q = attention.q_proj.weight.reshape(heads, head_dim, channels)
    q_keys = (k @ w_q).reshape(heads * tokens, channels)  # (H*T, C)
    bias = (k @ attention.q_proj.bias.reshape(heads, head_dim, 1)).reshape(heads * tokens)
    scores = (queries @ q_keys.T + bias) / math.sqrt(head_dim)  # (4096, H*T)
    weights = torch.softmax(scores.reshape(-1, heads, tokens), dim=-1).reshape(-1, heads * tokens)
    w_out = attention.out_proj.weight.reshape(channels, heads, head_dim).permute(1, 2, 0)  # (H, d, C)
    v_out = (v @ w_out).reshape(heads * tokens, channels)  # (H*T, C)
    return weights @ v_out + attention.out_proj.bias


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
    return export_onnx(model, inputs, outputs, dynamic_axes, output, quantize)


def export_onnx(
    model: torch.nn.Module,
    inputs: dict[str, torch.Tensor],
    outputs: list[str],
    dynamic_axes: dict[str, dict[int, str]],
    output: Path,
    quantize: bool = False,
) -> Path:
    """Trace model on inputs (named as the dict) into one .onnx file at output (opset 17,
    constant folding, the TorchScript exporter); quantize: dynamic int8 weights."""
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
