"""One BiFPN cell, with zylo117's module and parameter names (`conv6_up`, `p4_w2`, ...).

Top-down: P_L' = conv{L}_up(swish(fuse(P_L, up(P_{L+1}')))), starting from the top input.
Bottom-up: P_L'' = conv{L}_down(swish(fuse(P_L, P_L', down(P_{L-1}'')))); the top level
has no P_L' term. Fusion is fast normalised attention (ReLU weights / (sum + 1e-4)) for
D0-D5 and a plain sum for D6-D7x. The first cell builds its inputs from the backbone.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layers import SeparableConvBlock, fuse_projection, max_pool_same, projection, swish

FUSION_EPS = 1e-4


def _upsample(x: Tensor) -> Tensor:
    return F.interpolate(x, scale_factor=2.0, mode="nearest")


class BiFPN(nn.Module):
    """A BiFPN cell over P3-P7 (or P3-P8 when use_p8)."""

    def __init__(
        self,
        channels: int,
        backbone_channels: tuple[int, int, int],
        first_time: bool = False,
        attention: bool = True,
        use_p8: bool = False,
    ) -> None:
        super().__init__()
        if attention and use_p8:
            raise ValueError("fast-attention fusion is not defined for P3-P8")
        self.first_time = first_time
        self.attention = attention
        self.use_p8 = use_p8
        self.top = 8 if use_p8 else 7

        # Registration order follows zylo117 so state_dict key order matches too.
        for level in (6, 5, 4, 3):
            self.add_module(f"conv{level}_up", SeparableConvBlock(channels))
        for level in (4, 5, 6, 7):
            self.add_module(f"conv{level}_down", SeparableConvBlock(channels))
        if use_p8:
            self.conv7_up = SeparableConvBlock(channels)
            self.conv8_down = SeparableConvBlock(channels)

        if first_time:
            c3, c4, c5 = backbone_channels
            self.p5_down_channel = projection(c5, channels)
            self.p4_down_channel = projection(c4, channels)
            self.p3_down_channel = projection(c3, channels)
            self.p5_to_p6 = projection(c5, channels, pool=True)
            self.p4_down_channel_2 = projection(c4, channels)
            self.p5_down_channel_2 = projection(c5, channels)

        # Fusion weights exist in every cell (zylo117 saves them even when unused).
        for name, n in (("p6_w1", 2), ("p5_w1", 2), ("p4_w1", 2), ("p3_w1", 2)):
            self.register_parameter(name, nn.Parameter(torch.ones(n, dtype=torch.float32)))
        for name, n in (("p4_w2", 3), ("p5_w2", 3), ("p6_w2", 3), ("p7_w2", 2)):
            self.register_parameter(name, nn.Parameter(torch.ones(n, dtype=torch.float32)))

    def fuse_batchnorm(self) -> None:
        """Fold every BN into the conv before it (inference only; changes the state_dict)."""
        for module in self.children():
            if isinstance(module, SeparableConvBlock):
                module.fuse_batchnorm()
            elif isinstance(module, nn.Sequential):
                fuse_projection(module)

    def _combine(self, weight_name: str, inputs: list[Tensor]) -> Tensor:
        """swish(weighted or plain sum of same-shaped inputs)."""
        if self.attention:
            w = F.relu(getattr(self, weight_name))
            w = w / (torch.sum(w, dim=0) + FUSION_EPS)
            out = w[0] * inputs[0]
            for i in range(1, len(inputs)):
                out = out + w[i] * inputs[i]
        else:
            out = inputs[0]
            for extra in inputs[1:]:
                out = out + extra
        return swish(out)

    def _inputs(self, inputs: tuple[Tensor, ...]) -> tuple[dict[int, Tensor], dict[int, Tensor]]:
        """Per-level inputs for the top-down and for the bottom-up path."""
        if not self.first_time:
            levels = dict(zip(range(3, self.top + 1), inputs))
            return levels, levels
        p3, p4, p5 = inputs
        p6 = self.p5_to_p6(p5)
        down = {3: self.p3_down_channel(p3), 4: self.p4_down_channel(p4), 5: self.p5_down_channel(p5), 6: p6}
        down[7] = max_pool_same(p6)
        if self.use_p8:
            down[8] = max_pool_same(down[7])
        up = dict(down)
        up[4] = self.p4_down_channel_2(p4)
        up[5] = self.p5_down_channel_2(p5)
        return down, up

    def forward(self, inputs: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        td_in, bu_in = self._inputs(inputs)
        top = self.top

        # Top-down path: mid[L] for L = top-1 .. 3 (mid[3] is already the P3 output).
        mid: dict[int, Tensor] = {top: td_in[top]}
        for level in range(top - 1, 2, -1):
            fused = self._combine(f"p{level}_w1", [td_in[level], _upsample(mid[level + 1])])
            mid[level] = getattr(self, f"conv{level}_up")(fused)

        # Bottom-up path.
        outs = [mid[3]]
        for level in range(4, top + 1):
            down = max_pool_same(outs[-1])
            terms = [bu_in[level], down] if level == top else [bu_in[level], mid[level], down]
            outs.append(getattr(self, f"conv{level}_down")(self._combine(f"p{level}_w2", terms)))
        return tuple(outs)
