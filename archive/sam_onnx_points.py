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

import math
from pathlib import Path

import torch
from segment_anything.modeling import Sam

from smvision.archive.sam_onnx import EMBEDDING_SHAPE, LowResSamOnnxModel, export_onnx


class PointBatchSamOnnxModel(LowResSamOnnxModel):
    """B point prompts on one image embedding -> B sets of four low-res masks and scores:
    MaskDecoder.predict_masks with the served decoder's re-association (see
    LowResSamOnnxModel), batched. The first layer's image side is shared by all B
    prompts (one matrix product for all of them); after it every prompt has its own
    4096 image tokens."""

    @torch.no_grad()
    def forward(  # type: ignore[override]
        self, image_embeddings: torch.Tensor, point_coords: torch.Tensor, point_labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        decoder = self.model.mask_decoder
        transformer = decoder.transformer
        sparse = self._embed_points(point_coords, point_labels)  # (B, N, C)
        prompt_pe = torch.cat([self.output_tokens.expand(sparse.shape[0], -1, -1), sparse], dim=1)  # (B, T, C)
        channels = image_embeddings.shape[1]
        no_mask = self.model.prompt_encoder.no_mask_embed.weight  # (1, C): the generator gives no mask
        keys = image_embeddings.reshape(channels, -1).T + no_mask  # (4096, C), shared until layer 1 updates it
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
        return scores, self._upscale_batch(keys, hyper)

    def _upscale_batch(self, tokens: torch.Tensor, hyper: torch.Tensor) -> torch.Tensor:
        """output_upscaling then hyper . pixels: (B, 4096, 256) tokens, (B, 4, 32) hyper ->
        (B, 4, 256, 256), the transposed convolutions as in LowResSamOnnxModel._upscale."""
        up1, norm, act1, up2, act2 = self.model.mask_decoder.output_upscaling
        side = self.model.prompt_encoder.image_embedding_size[0]
        count, masks = tokens.shape[0], hyper.shape[1]
        hidden = tokens @ up1.weight.permute(0, 2, 3, 1).flatten(1) + up1.bias.repeat(4)
        hidden = hidden.reshape(-1, up1.out_channels)
        hidden = act1(torch.nn.functional.layer_norm(hidden, (up1.out_channels,), norm.weight, norm.bias, norm.eps))
        hidden = hidden @ up2.weight.permute(0, 2, 3, 1).flatten(1) + up2.bias.repeat(4)
        hidden = act2(hidden.reshape(count, -1, up2.out_channels))
        logits = hyper @ hidden.transpose(1, 2)  # (B, 4, pixels in (y, x, a, b, c, d) order)
        logits = logits.reshape(count, masks, side, side, 2, 2, 2, 2).permute(0, 1, 2, 4, 6, 3, 5, 7)
        return logits.reshape(count, masks, 4 * side, 4 * side)


def _token_to_image(attention, queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Attention(q=queries (B, T, C), k=keys, v=values ((4096, C) shared or (B, 4096, C)))
    without projecting keys or values."""
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
    v=values), re-associated as the served decoder's image->token attention."""
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
