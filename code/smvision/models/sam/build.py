"""SAM built from segment_anything's own modules: a table of named configurations, one factory.

The official types (vit_b, vit_l, vit_h) are segment_anything.build_sam's, so the official
checkpoints (sam_vit_b_01ec64.pth, ...) load unchanged. `vit_tiny_test` is a CI-sized SAM
with the same interfaces (2.1M parameters, encodes a 1024x1024 image in about 0.25 s on
two cores): tests and demos build it with random weights from a fixed seed, so no
checkpoint has to be downloaded or committed. It is never a model to serve for real.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any, Mapping

IMAGE_SIZE = 1024
PATCH_SIZE = 16
PROMPT_EMBED_DIM = 256
EMBEDDING_SIZE = IMAGE_SIZE // PATCH_SIZE  # 64
EMBEDDING_SHAPE = (1, PROMPT_EMBED_DIM, EMBEDDING_SIZE, EMBEDDING_SIZE)
PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)


@dataclass(frozen=True)
class SamConfig:
    """One SAM architecture: its image encoder (ViT) and mask decoder sizes."""

    model_type: str
    embed_dim: int
    depth: int
    num_heads: int
    global_attn_indexes: tuple[int, ...]
    mlp_ratio: float = 4.0
    decoder_depth: int = 2
    decoder_mlp_dim: int = 2048
    iou_head_hidden_dim: int = 256
    checkpoint: str | None = None  # the official file name, for messages

    def describe(self) -> str:
        """'vit_b (ViT embed dim 768, 12 blocks; official checkpoint sam_vit_b_01ec64.pth)'."""
        official = f"; official checkpoint {self.checkpoint}" if self.checkpoint else ""
        return f"{self.model_type} (ViT embed dim {self.embed_dim}, {self.depth} blocks{official})"


SAM_CONFIGS: dict[str, SamConfig] = {
    "vit_b": SamConfig("vit_b", 768, 12, 12, (2, 5, 8, 11), checkpoint="sam_vit_b_01ec64.pth"),
    "vit_l": SamConfig("vit_l", 1024, 24, 16, (5, 11, 17, 23), checkpoint="sam_vit_l_0b3195.pth"),
    "vit_h": SamConfig("vit_h", 1280, 32, 16, (7, 15, 23, 31), checkpoint="sam_vit_h_4b8939.pth"),
    # CI-sized (2.1M parameters, the real classes, encodes in about 0.25 s): random weights only, for tests and demos
    "vit_tiny_test": SamConfig(
        "vit_tiny_test", 32, 2, 2, (1,), mlp_ratio=2.0, decoder_depth=1, decoder_mlp_dim=64, iou_head_hidden_dim=32
    ),
}
OFFICIAL_TYPES = ("vit_b", "vit_l", "vit_h")


class CheckpointError(ValueError):
    """A checkpoint that is not a SAM state_dict of the expected type."""


def sam_config(model_type: str) -> SamConfig:
    """The configuration of a model type, or a ValueError listing the types there are."""
    try:
        return SAM_CONFIGS[model_type]
    except KeyError:
        raise ValueError(f"unknown SAM model type {model_type!r}; use one of {', '.join(SAM_CONFIGS)}") from None


def build_image_encoder(config: SamConfig) -> Any:
    """segment_anything's ImageEncoderViT for config (randomly initialised)."""
    import torch
    from segment_anything.modeling import ImageEncoderViT

    return ImageEncoderViT(
        img_size=IMAGE_SIZE,
        patch_size=PATCH_SIZE,
        embed_dim=config.embed_dim,
        depth=config.depth,
        num_heads=config.num_heads,
        mlp_ratio=config.mlp_ratio,
        norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
        qkv_bias=True,
        use_rel_pos=True,
        global_attn_indexes=config.global_attn_indexes,
        window_size=14,
        out_chans=PROMPT_EMBED_DIM,
    )


def build_sam(config: SamConfig) -> Any:
    """segment_anything's Sam for config (randomly initialised; seed torch first), in eval mode."""
    from segment_anything.modeling import MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    sam = Sam(
        image_encoder=build_image_encoder(config),
        prompt_encoder=PromptEncoder(
            embed_dim=PROMPT_EMBED_DIM,
            image_embedding_size=(EMBEDDING_SIZE, EMBEDDING_SIZE),
            input_image_size=(IMAGE_SIZE, IMAGE_SIZE),
            mask_in_chans=16,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(
                depth=config.decoder_depth,
                embedding_dim=PROMPT_EMBED_DIM,
                mlp_dim=config.decoder_mlp_dim,
                num_heads=8,
            ),
            transformer_dim=PROMPT_EMBED_DIM,
            iou_head_depth=3,
            iou_head_hidden_dim=config.iou_head_hidden_dim,
        ),
        pixel_mean=list(PIXEL_MEAN),
        pixel_std=list(PIXEL_STD),
    )
    return sam.eval()


def load_sam_checkpoint(path: str, config: SamConfig) -> Any:
    """A Sam of config type with the checkpoint's weights, checked strictly.

    A file that is not a SAM state_dict, or one of another model type, is a
    CheckpointError that names what was expected.
    """
    import torch

    try:
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a pickle with code in it, a truncated file, not a torch file
        raise CheckpointError(f"{path} could not be read as a torch state_dict: {exc}"[:400]) from None
    check_sam_state_dict(state_dict, config, path)
    sam = build_sam(config)
    sam.load_state_dict(state_dict, strict=True)
    return sam


def check_sam_state_dict(state_dict: Any, config: SamConfig, source: str) -> None:
    """CheckpointError unless state_dict is a SAM checkpoint of config's type."""
    expected = f"expected a SAM {config.describe()} state_dict (keys image_encoder.*, prompt_encoder.*, mask_decoder.*)"
    if not isinstance(state_dict, Mapping) or not any(str(k).startswith("image_encoder.") for k in state_dict):
        what = type(state_dict).__name__
        keys = ", ".join(list(map(str, state_dict))[:3]) if isinstance(state_dict, Mapping) else ""
        raise CheckpointError(f"{source} is not a SAM checkpoint ({what}{': ' + keys + ', ...' if keys else ''}); {expected}")
    found = _found_type(state_dict)
    if found != (config.embed_dim, config.depth):
        name = next((c.model_type for c in SAM_CONFIGS.values() if (c.embed_dim, c.depth) == found), "an unknown type")
        raise CheckpointError(
            f"{source} is a {name} checkpoint (ViT embed dim {found[0]}, {found[1]} blocks); {expected}"
        )
    prefixes = {str(k).split(".", 1)[0] for k in state_dict}
    missing = {"image_encoder", "prompt_encoder", "mask_decoder"} - prefixes
    if missing:
        raise CheckpointError(f"{source} lacks {', '.join(sorted(missing))}; {expected}")


def _found_type(state_dict: Mapping[str, Any]) -> tuple[int, int]:
    """(ViT embed dim, number of blocks) of a SAM state_dict."""
    patch = state_dict.get("image_encoder.patch_embed.proj.weight")
    embed_dim = int(patch.shape[0]) if patch is not None else -1
    blocks = {int(k.split(".")[2]) for k in state_dict if str(k).startswith("image_encoder.blocks.")}
    return embed_dim, len(blocks)
