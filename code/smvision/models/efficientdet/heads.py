"""Box and class heads: separable convs shared across levels, one BN per level and layer.

Key layout as zylo117's Regressor / Classifier: `conv_list.{layer}`, `bn_list.{level}.{layer}`,
`header`. Outputs are concatenated over levels in NHWC order, i.e. level -> y -> x -> anchor.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from .layers import SeparableConvBlock, batch_norm, swish


class _Head(nn.Module):
    """Shared conv tower + per-level BNs + a header with `outputs_per_anchor` values per anchor."""

    def __init__(
        self, channels: int, num_anchors: int, outputs_per_anchor: int, num_layers: int, num_levels: int
    ) -> None:
        super().__init__()
        self.outputs_per_anchor = outputs_per_anchor
        self.conv_list = nn.ModuleList(SeparableConvBlock(channels, norm=False) for _ in range(num_layers))
        self.bn_list = nn.ModuleList(
            nn.ModuleList(batch_norm(channels) for _ in range(num_layers)) for _ in range(num_levels)
        )
        self.header = SeparableConvBlock(channels, num_anchors * outputs_per_anchor, norm=False)
        self.fused: nn.ModuleList | None = None  # per level, per layer: pointwise conv with its BN folded in

    def fuse_batchnorm(self) -> None:
        """Fold each level's BNs into per-level copies of the shared pointwise convs.

        Inference only: the state_dict changes (bn_list goes, `fused` comes).
        """
        self.fused = nn.ModuleList(
            nn.ModuleList(
                fuse_conv_bn_eval(conv.pointwise_conv.conv.eval(), bn.eval()) for conv, bn in zip(self.conv_list, bns)
            )
            for bns in self.bn_list
        )
        for conv in self.conv_list:
            conv.pointwise_conv = None
        self.bn_list = None

    def _tower(self, feat: Tensor, level: int) -> Tensor:
        if self.fused is None:
            for conv, bn in zip(self.conv_list, self.bn_list[level]):
                feat = swish(bn(conv(feat)))
        else:
            for conv, pointwise in zip(self.conv_list, self.fused[level]):
                feat = swish(pointwise(conv.depthwise_conv(feat)))
        return feat

    def _raw(self, features: tuple[Tensor, ...]) -> Tensor:
        levels = len(self.bn_list if self.fused is None else self.fused)
        if len(features) != levels:
            raise ValueError(f"head built for {levels} pyramid levels got {len(features)}")
        outs = []
        for level, feat in enumerate(features):
            feat = self.header(self._tower(feat, level))
            # (B, A*k, H, W) -> (B, H*W*A, k); a free view when the map is channels_last.
            outs.append(feat.permute(0, 2, 3, 1).reshape(feat.shape[0], -1, self.outputs_per_anchor))
        return torch.cat(outs, dim=1)


class Regressor(_Head):
    """Box regression (dy, dx, dh, dw) per anchor: (B, A, 4)."""

    def __init__(self, channels: int, num_anchors: int, num_layers: int, num_levels: int = 5) -> None:
        super().__init__(channels, num_anchors, 4, num_layers, num_levels)

    def forward(self, features: tuple[Tensor, ...]) -> Tensor:
        return self._raw(features)


class Classifier(_Head):
    """Per-class probabilities (sigmoid applied) per anchor: (B, A, num_classes)."""

    def __init__(self, channels: int, num_anchors: int, num_classes: int, num_layers: int, num_levels: int = 5) -> None:
        super().__init__(channels, num_anchors, num_classes, num_layers, num_levels)
        self.num_classes = num_classes

    def init_prior(self, prior: float = 0.01) -> None:
        """Bias the header so a fresh model scores about `prior` everywhere (RetinaNet init)."""
        nn.init.constant_(self.header.pointwise_conv.conv.bias, -math.log((1 - prior) / prior))

    def forward(self, features: tuple[Tensor, ...]) -> Tensor:
        return self._raw(features).sigmoid()
