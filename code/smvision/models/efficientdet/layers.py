"""Building blocks with TensorFlow "SAME" padding and zylo117's parameter names.

zylo117 wraps every convolution in a module whose nn.Conv2d is called `conv`, so its
state_dict keys read `..._conv_stem.conv.weight`; these layers keep that layout.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

BN_MOMENTUM = 0.01
BN_EPS = 1e-3


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF 'SAME' padding (before, after) for one spatial dimension of `size`."""
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def pad_same(x: Tensor, kernel: int, stride: int) -> Tensor:
    """Zero-pad x (N, C, H, W) so a kernel/stride window gives ceil(size / stride) outputs."""
    top, bottom = same_padding(x.shape[-2], kernel, stride)
    left, right = same_padding(x.shape[-1], kernel, stride)
    if top or bottom or left or right:
        x = F.pad(x, (left, right, top, bottom))
    return x


def batch_norm(channels: int) -> nn.BatchNorm2d:
    """BatchNorm with the TF defaults EfficientDet uses (momentum 0.01, eps 1e-3)."""
    return nn.BatchNorm2d(channels, momentum=BN_MOMENTUM, eps=BN_EPS)


class Conv2dSame(nn.Module):
    """Conv2d with TF 'SAME' padding computed from the input size; the conv lives in `.conv`.

    Stride-1 odd kernels always pad (k-1)/2 on each side, so those use the conv's own
    padding; strided ones pad at call time (the amount depends on the input's parity).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        groups: int = 1,
        bias: bool = True,
    ) -> None:
        super().__init__()
        self.kernel = int(kernel_size)
        self.stride = int(stride)
        self.static = self.stride == 1 and self.kernel % 2 == 1
        padding = self.kernel // 2 if self.static else 0
        self.conv = nn.Conv2d(
            in_channels, out_channels, self.kernel, stride=self.stride, padding=padding, groups=groups, bias=bias
        )

    @classmethod
    def from_conv(cls, conv: nn.Conv2d) -> "Conv2dSame":
        """Wrap an existing (unpadded) Conv2d, sharing its parameters."""
        kh, kw = conv.kernel_size
        stride = conv.stride[0] if len(conv.stride) else 1
        if kh != kw or any(s != stride for s in conv.stride) or any(d != 1 for d in conv.dilation):
            raise ValueError(f"only square, undilated convolutions are supported, got {conv}")
        out = cls(conv.in_channels, conv.out_channels, kh, stride, conv.groups, conv.bias is not None)
        out.conv.weight = conv.weight
        if conv.bias is not None:
            out.conv.bias = conv.bias
        return out

    def forward(self, x: Tensor) -> Tensor:
        if not self.static:
            x = pad_same(x, self.kernel, self.stride)
        return self.conv(x)


def max_pool_same(x: Tensor) -> Tensor:
    """3x3 stride-2 max-pool with TF 'SAME' padding, padding with zeros (as zylo117 does)."""
    return F.max_pool2d(pad_same(x, 3, 2), kernel_size=3, stride=2)


class MaxPool2dSame(nn.Module):
    """Module form of max_pool_same (no parameters)."""

    def forward(self, x: Tensor) -> Tensor:
        return max_pool_same(x)


def fold_batchnorm(conv: Conv2dSame, bn: nn.BatchNorm2d) -> None:
    """In place, for inference: make `conv` compute bn(conv(x)) by itself."""
    conv.conv = fuse_conv_bn_eval(conv.conv.eval(), bn.eval())


def fuse_projection(layers: nn.Sequential) -> None:
    """Fold a projection's BN (index 1) into its conv (index 0)."""
    fold_batchnorm(layers[0], layers[1])
    layers[1] = nn.Identity()


class SeparableConvBlock(nn.Module):
    """Depthwise 3x3 (no bias) -> pointwise 1x1 (bias) -> optional BN; no activation."""

    def __init__(self, in_channels: int, out_channels: int | None = None, norm: bool = True) -> None:
        super().__init__()
        out_channels = in_channels if out_channels is None else out_channels
        self.depthwise_conv = Conv2dSame(in_channels, in_channels, 3, groups=in_channels, bias=False)
        self.pointwise_conv = Conv2dSame(in_channels, out_channels, 1)
        self.bn = batch_norm(out_channels) if norm else None

    def fuse_batchnorm(self) -> None:
        """Fold the BN into the pointwise conv (inference only; changes the state_dict)."""
        if self.bn is not None:
            fold_batchnorm(self.pointwise_conv, self.bn)
            self.bn = None

    def forward(self, x: Tensor) -> Tensor:
        x = self.pointwise_conv(self.depthwise_conv(x))
        return x if self.bn is None else self.bn(x)


def projection(in_channels: int, out_channels: int, pool: bool = False) -> nn.Sequential:
    """1x1 conv + BN (+ SAME max-pool): keys `.0.conv.*`, `.1.*` as in zylo117."""
    layers: list[nn.Module] = [Conv2dSame(in_channels, out_channels, 1), batch_norm(out_channels)]
    if pool:
        layers.append(MaxPool2dSame())
    return nn.Sequential(*layers)


def swish(x: Tensor) -> Tensor:
    """x * sigmoid(x); in place when no graph is recorded (callers pass fresh tensors)."""
    return F.silu(x, inplace=not torch.is_grad_enabled())


class Swish(nn.Module):
    """Module form of swish, for the EfficientNet blocks."""

    def forward(self, x: Tensor) -> Tensor:
        return swish(x)


__all__ = [
    "Conv2dSame",
    "MaxPool2dSame",
    "SeparableConvBlock",
    "Swish",
    "batch_norm",
    "fold_batchnorm",
    "fuse_projection",
    "max_pool_same",
    "pad_same",
    "projection",
    "same_padding",
    "swish",
]
