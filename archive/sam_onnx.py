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

import numpy as np
import torch
from segment_anything.modeling import Sam
from segment_anything.utils.onnx import SamOnnxModel

from smvision.models.sam.build import EMBEDDING_SHAPE

OPSET = 17


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
      keys . (Wq k) and attn . (v Wo + out bias / heads): no projection of the 4096 image
      tokens at all (about 2.3x fewer multiply-adds in the transformer), keys +
      positional encoding once per layer;
    - batch-first (decode): B prompts on one image share the first layer's image side
      (everything mode's points graph); the served graph is B = 1;
    - the stride-2 transposed convolutions of output_upscaling as plain matrix products in
      sub-pixel order, with the hypernetwork product done before the one pixel shuffle;
    - the 4096 image tokens stay (tokens, channels) from start to end;
    - the dense prompt embedding is an input, (R, 256) added to every token: R = 1 for the
      no-mask embedding, R = 4096 for a mask_input through MaskEmbedding; export_sam_decoder
      joins both behind SAM's usual mask_input / has_mask_input (an ONNX If), so a request
      without a mask runs none of the mask downscaling.
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
        dense_embedding: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.decode(image_embeddings, self._embed_points(point_coords, point_labels), dense_embedding)

    def decode(self, image_embeddings: torch.Tensor, sparse: torch.Tensor, dense: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """B prompts' point embeddings (B, N, C) on one image embedding (1, C, 64, 64) with
        a dense prompt (R, C) -> scores (B, 4) and low-res logits (B, 4, 256, 256). The
        image side is one (4096, C) for all prompts until the first layer updates it."""
        decoder = self.model.mask_decoder
        transformer = decoder.transformer
        prompt_pe = torch.cat([self.output_tokens.expand(sparse.shape[0], -1, -1), sparse], dim=1)  # (B, T, C)
        channels = image_embeddings.shape[1]
        keys = image_embeddings.reshape(channels, -1).T + dense
        queries = prompt_pe
        for layer in transformer.layers:
            if layer.skip_first_layer_pe:
                queries = layer.self_attn(queries, queries, queries)
            else:
                q = queries + prompt_pe
                queries = queries + layer.self_attn(q, q, queries)
            queries = layer.norm1(queries)
            keys_pe = keys + self.image_pe
            attended = _token_to_image(layer.cross_attn_token_to_image, queries + prompt_pe, keys_pe, keys)
            queries = layer.norm2(queries + attended)
            queries = layer.norm3(queries + layer.mlp(queries))
            keys = layer.norm4(_image_to_token(layer.cross_attn_image_to_token, keys_pe, queries + prompt_pe, queries, keys))
        attended = _token_to_image(transformer.final_attn_token_to_image, queries + prompt_pe, keys + self.image_pe, keys)
        queries = transformer.norm_final_attn(queries + attended)
        hyper = torch.stack([mlp(queries[:, 1 + i]) for i, mlp in enumerate(decoder.output_hypernetworks_mlps)], dim=1)
        scores = decoder.iou_prediction_head(queries[:, 0])
        return scores, self._upscale(keys, hyper)

    def _upscale(self, tokens: torch.Tensor, hyper: torch.Tensor) -> torch.Tensor:
        """output_upscaling then hyper . pixels: (B, 4096, 256) tokens, (B, 4, 32) hyper ->
        (B, 4, 256, 256)."""
        up1, norm, act1, up2, act2 = self.model.mask_decoder.output_upscaling
        side = self.model.prompt_encoder.image_embedding_size[0]
        count, masks = tokens.shape[0], hyper.shape[1]
        # ConvTranspose2d(k=2, s=2): every input pixel -> 2x2 outputs, a matrix product.
        hidden = tokens @ up1.weight.permute(0, 2, 3, 1).flatten(1) + up1.bias.repeat(4)
        hidden = hidden.reshape(-1, up1.out_channels)
        hidden = act1(torch.nn.functional.layer_norm(hidden, (up1.out_channels,), norm.weight, norm.bias, norm.eps))
        hidden = hidden @ up2.weight.permute(0, 2, 3, 1).flatten(1) + up2.bias.repeat(4)
        hidden = act2(hidden.reshape(count, -1, up2.out_channels))
        logits = hyper @ hidden.transpose(1, 2)  # (B, 4, pixels): pixel (4y + 2a + c, 4x + 2b + d) in (y, x, a, b, c, d) order
        logits = logits.reshape(count, masks, side, side, 2, 2, 2, 2).permute(0, 1, 2, 4, 6, 3, 5, 7)
        return logits.reshape(count, masks, 4 * side, 4 * side)


class MaskEmbedding(torch.nn.Module):
    """SAM's dense prompt for a mask_input (1, 1, 256, 256): prompt_encoder.mask_downscaling
    as (4096, 256) tokens, the convolutions as matrix products on 2x2 blocks."""

    def __init__(self, model: Sam) -> None:
        super().__init__()
        self.prompt_encoder = model.prompt_encoder

    @torch.no_grad()
    def forward(self, mask_input: torch.Tensor) -> torch.Tensor:
        conv1, norm1, act1, conv2, norm2, act2, conv3 = self.prompt_encoder.mask_downscaling
        side = self.prompt_encoder.image_embedding_size[0]
        # mask row 4y + 2a + c, column 4x + 2b + d -> (y, x, a, b, c, d)
        blocks = mask_input.reshape(side, 2, 2, side, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(-1, 4)
        hidden = blocks @ conv1.weight.reshape(-1, 4).T + conv1.bias
        hidden = act1(torch.nn.functional.layer_norm(hidden, (hidden.shape[-1],), norm1.weight, norm1.bias, norm1.eps))
        hidden = hidden.reshape(side * side, -1) @ conv2.weight.permute(2, 3, 1, 0).reshape(-1, conv2.out_channels) + conv2.bias
        hidden = act2(torch.nn.functional.layer_norm(hidden, (hidden.shape[-1],), norm2.weight, norm2.bias, norm2.eps))
        return hidden @ conv3.weight.flatten(1).T + conv3.bias


def _token_to_image(attention, queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Attention(q=queries (B, T, C), k=keys, v=values ((4096, C) shared or (B, 4096, C)))
    without projecting keys or values: every head's scores in one (H*T, C) x (C, 4096)
    product per prompt."""
    heads = attention.num_heads
    head_dim = attention.internal_dim // heads
    count, tokens, channels = queries.shape
    q = attention.q_proj(queries).reshape(count, tokens, heads, head_dim).transpose(1, 2)  # (B, H, T, d)
    q_keys = q @ (attention.k_proj.weight.reshape(heads, head_dim, channels) / math.sqrt(head_dim))  # (B, H, T, C)
    weights = torch.softmax(q_keys.reshape(count, heads * tokens, channels) @ keys.transpose(-1, -2), dim=-1)
    mixed = (weights @ values).reshape(count, heads, tokens, channels)  # (B, H, T, C)
    out = mixed @ attention.v_proj.weight.reshape(heads, head_dim, channels).transpose(1, 2)
    out = out + attention.v_proj.bias.reshape(heads, 1, head_dim)
    return attention.out_proj(out.transpose(1, 2).reshape(count, tokens, heads * head_dim))


def _image_to_token(attention, queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """residual + Attention(q=queries ((4096, C) shared or (B, 4096, C)), k=keys (B, T, C),
    v=values), without projecting the queries nor running out_proj over 4096 rows: each
    head's weights sum to 1, so out_proj's bias rides on the value rows (/ heads)."""
    heads = attention.num_heads
    head_dim = attention.internal_dim // heads
    count, tokens, channels = keys.shape
    k = attention.k_proj(keys).reshape(count, tokens, heads, head_dim).transpose(1, 2) / math.sqrt(head_dim)  # (B, H, T, d)
    v = attention.v_proj(values).reshape(count, tokens, heads, head_dim).transpose(1, 2)
    w_q = attention.q_proj.weight.reshape(heads, head_dim, channels)
    q_keys = (k @ w_q).reshape(count, heads * tokens, channels)  # (B, H*T, C)
    bias = (k @ attention.q_proj.bias.reshape(heads, head_dim, 1)).reshape(count, 1, heads * tokens)
    scores = queries @ q_keys.transpose(1, 2) + bias  # (B, 4096, H*T)
    weights = torch.softmax(scores.reshape(count, -1, heads, tokens), dim=-1).reshape(count, -1, heads * tokens)
    w_out = attention.out_proj.weight.reshape(channels, heads, head_dim).permute(1, 2, 0)  # (H, d, C)
    v_out = (v @ w_out).reshape(count, heads * tokens, channels) + attention.out_proj.bias / heads  # (B, H*T, C)
    return residual + weights @ v_out


def example_inputs(sam: Sam, upsample: bool) -> dict[str, torch.Tensor]:
    """Inputs of the right shapes to trace with (3 points; a non-square image): the
    upstream graph's, or LowResSamOnnxModel's (a dense embedding in place of the mask)."""
    generator = torch.Generator().manual_seed(0)
    inputs = {
        "image_embeddings": torch.randn(*EMBEDDING_SHAPE, generator=generator),
        "point_coords": torch.randint(0, 1024, (3, 2), generator=generator).float()[None],
        "point_labels": torch.tensor([[1.0, 0.0, -1.0]]),
    }
    if not upsample:
        return {**inputs, "dense_embedding": torch.randn(1, EMBEDDING_SHAPE[1], generator=generator)}
    return {**inputs, "mask_input": mask_example(sam), "has_mask_input": torch.tensor([1.0]),
            "orig_im_size": torch.tensor([1500.0, 2250.0])}


def mask_example(sam: Sam) -> torch.Tensor:
    """A random mask_input (1, 1, 256, 256) to trace with."""
    size = [4 * s for s in sam.prompt_encoder.image_embedding_size]
    return torch.randn(1, 1, *size, generator=torch.Generator().manual_seed(1))


def export_sam_decoder(sam: Sam, output: Path, quantize: bool = False, upsample: bool = False) -> Path:
    """Write SAM's prompt encoder + mask decoder to output (one .onnx file, opset 17,
    any point count; inputs image_embeddings, point_coords, point_labels, mask_input,
    has_mask_input as segment_anything's export); quantize: dynamic int8 weights
    (onnxruntime.quantization). upsample: the upstream graph, which also takes
    orig_im_size and outputs `masks`, logits at the original size."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    sam = sam.cpu().eval()
    inputs = example_inputs(sam, upsample)
    dynamic_axes = {"point_coords": {1: "num_points"}, "point_labels": {1: "num_points"}}
    if upsample:
        outputs = ["masks", "iou_predictions", "low_res_masks"]
        dynamic_axes["masks"] = {2: "height", 3: "width"}
        return export_onnx(FixedSamOnnxModel(sam, return_single_mask=False), inputs, outputs, dynamic_axes, output, quantize)
    import onnx

    dynamic_axes["dense_embedding"] = {0: "dense_rows"}
    with tempfile.TemporaryDirectory() as scratch:
        decoder = export_onnx(LowResSamOnnxModel(sam), inputs, ["iou_predictions", "low_res_masks"], dynamic_axes,
                              Path(scratch) / "decoder.onnx")
        mask = export_onnx(MaskEmbedding(sam), {"mask_input": mask_example(sam)}, ["dense_embedding"], {},
                           Path(scratch) / "mask.onnx")
        no_mask = sam.prompt_encoder.no_mask_embed.weight.detach().numpy()
        joined = join_mask_branch(onnx.load(str(decoder)), onnx.load(str(mask)), no_mask)
        target = Path(scratch) / "joined.onnx" if quantize else output
        onnx.save(joined, str(target))
        if quantize:
            _quantize(target, output)
    return output


def join_mask_branch(decoder, mask, no_mask):
    """The decoder graph with its dense_embedding input replaced by SAM's mask_input
    (1, 1, 256, 256) and has_mask_input (1,): If has_mask_input > 0.5, the mask graph's
    (4096, 256) tokens, else the no-mask embedding (1, 256) (onnx.ModelProto in and out)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    branch = mask.graph
    renamed = {value.name: f"mask/{value.name}" for value in branch.initializer}
    renamed.update({name: f"mask/{name}" for node in branch.node for name in node.output})
    for node in branch.node:
        node.name = f"mask/{node.name}"
        node.input[:] = [renamed.get(name, name) for name in node.input]
        node.output[:] = [renamed[name] for name in node.output]
    for value in branch.initializer:
        value.name = renamed[value.name]
    (mask_input,), (mask_output,) = branch.input, branch.output
    dense_type = helper.make_tensor_value_info("dense", TensorProto.FLOAT, None)
    then_branch = helper.make_graph(
        list(branch.node) + [helper.make_node("Identity", [renamed[mask_output.name]], ["dense"])],
        "mask_embedding", [], [dense_type], list(branch.initializer))
    else_branch = helper.make_graph(
        [helper.make_node("Constant", [], ["dense"], value=numpy_helper.from_array(no_mask.astype("float32"), "no_mask"))],
        "no_mask_embedding", [], [dense_type])
    graph = decoder.graph
    dense = next(value for value in graph.input if value.name == "dense_embedding")
    graph.input.remove(dense)
    graph.input.extend([mask_input, helper.make_tensor_value_info("has_mask_input", TensorProto.FLOAT, [1])])
    graph.initializer.append(numpy_helper.from_array(np.array([0.5], dtype=np.float32), "mask/half"))
    graph.node.insert(0, helper.make_node("Greater", ["has_mask_input", "mask/half"], ["mask/has_mask"]))
    graph.node.insert(1, helper.make_node("If", ["mask/has_mask"], ["dense_embedding"], name="mask/if",
                                          then_branch=then_branch, else_branch=else_branch))
    onnx.checker.check_model(decoder)
    return decoder


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
