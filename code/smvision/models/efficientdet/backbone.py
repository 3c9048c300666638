"""EfficientNet feature extractor on the pip `efficientnet_pytorch` package, in zylo117's key layout.

The pip model is built with dynamic ("SAME" at call time) padding; its classification
head is removed and each convolution is re-wrapped so its weights sit under `.conv`
(`model._conv_stem.conv.weight`), which is how zylo117's checkpoints name them.
"""

from __future__ import annotations

from efficientnet_pytorch import EfficientNet
from torch import Tensor, nn

from .layers import Conv2dSame, Swish, fold_batchnorm

_HEAD_MODULES = ("_conv_head", "_bn1", "_avg_pooling", "_dropout", "_fc")


def _stride(block: nn.Module) -> int:
    """A block's stride; pip stores it as [s] for a stage's first block and s for the rest."""
    stride = block._block_args.stride
    return int(stride[0] if isinstance(stride, (list, tuple)) else stride)


def _rewrap_convs(module: nn.Module) -> None:
    """Replace every plain Conv2d below `module` by a Conv2dSame holding it as `.conv`."""
    for name, child in list(module.named_children()):
        if isinstance(child, nn.Conv2d):
            setattr(module, name, Conv2dSame.from_conv(child))
        else:
            _rewrap_convs(child)


class EfficientNetBackbone(nn.Module):
    """EfficientNet-bN returning the stride 8, 16 and 32 feature maps (P3, P4, P5)."""

    def __init__(self, name: str) -> None:
        super().__init__()
        # image_size=None: padding computed from each input, right for any detector size.
        model = EfficientNet.from_name(name, image_size=None)
        for attr in _HEAD_MODULES:
            delattr(model, attr)
        _rewrap_convs(model)
        model._swish = Swish()
        for block in model._blocks:
            block._swish = Swish()
        self.model = model
        self.out_indices = self._feature_indices()

    def _feature_indices(self) -> tuple[int, int, int]:
        """Block indices whose outputs are at stride 8, 16 and 32.

        Features are taken just before each stride-2 block and after the last block.
        """
        blocks = self.model._blocks
        taps = [i - 1 for i, block in enumerate(blocks) if _stride(block) == 2 and i > 0]
        taps.append(len(blocks) - 1)
        if len(taps) < 3:
            raise ValueError("EfficientNet has fewer than three downsampling stages")
        p3, p4, p5 = taps[-3:]
        return p3, p4, p5

    def fuse_batchnorm(self) -> None:
        """Fold every BN into the conv before it (inference only; changes the state_dict)."""
        model = self.model
        fold_batchnorm(model._conv_stem, model._bn0)
        model._bn0 = nn.Identity()
        for block in model._blocks:
            pairs = [("_depthwise_conv", "_bn1"), ("_project_conv", "_bn2")]
            if block._block_args.expand_ratio != 1:
                pairs.append(("_expand_conv", "_bn0"))
            for conv, bn in pairs:
                fold_batchnorm(getattr(block, conv), getattr(block, bn))
                setattr(block, bn, nn.Identity())

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        model = self.model
        x = model._swish(model._bn0(model._conv_stem(x)))
        features: list[Tensor] = []
        blocks = model._blocks
        drop_rate = model._global_params.drop_connect_rate
        last = self.out_indices[-1]
        for idx, block in enumerate(blocks):
            rate = drop_rate * float(idx) / len(blocks) if drop_rate else drop_rate
            x = block(x, drop_connect_rate=rate)
            if idx in self.out_indices:
                features.append(x)
            if idx == last:
                break
        p3, p4, p5 = features
        return p3, p4, p5
