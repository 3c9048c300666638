"""EfficientDet weights for tests and benchmarks of numerics (torch vs ONNX Runtime, fp32 vs
bf16): random weights whose statistics spread like a trained network's, and a whole model
whose BatchNorm is calibrated on photos. Default initialisation (what `smvision archive
build` without --weights uses) scores every anchor near the 0.01 prior and hides drift."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from smvision.models.efficientdet import EfficientDet


def random_state_dict(shapes: Mapping[str, tuple[int, ...]], seed: int = 1) -> dict:
    """Random weights (key -> tensor of that shape) whose statistics spread like a trained
    network's: convs scaled by fan-in, BatchNorm statistics away from identity, some
    negative BiFPN fusion weights. For tests and benchmarks that compare numerics (torch vs
    ONNX, fp32 vs bf16): default initialisation's identity BatchNorm would hide differences.
    Values depend on the order of `shapes` (one generator, drawn key by key)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    out = {}
    for key, shape in shapes.items():
        if key.endswith("num_batches_tracked"):
            out[key] = torch.tensor(7)
        elif key.endswith("running_var"):
            out[key] = 0.5 + torch.rand(shape, generator=g)
        elif key.endswith("running_mean") or (key.endswith(".bias") and len(shape) == 1):
            out[key] = 0.1 * torch.randn(shape, generator=g)
        elif len(shape) == 1 and "_w" in key.rsplit(".", 1)[-1]:
            out[key] = torch.rand(shape, generator=g) * 1.2 - 0.2  # some negative: ReLU matters
        elif len(shape) == 1:
            out[key] = 0.5 + torch.rand(shape, generator=g)  # BN weight
        else:
            fan_in = shape[1] * shape[2] * shape[3]
            out[key] = torch.randn(shape, generator=g) / math.sqrt(fan_in)
    return out


def trained_like_efficientdet(coef: int, images: Sequence, num_classes: int = 90, seed: int = 0) -> "EfficientDet":
    """EfficientDet D{coef} whose numerics behave like a trained network's, in eval mode:
    BatchNorm affine parameters drawn at random, every spatial kernel blended 70% toward a
    Gaussian low-pass of its own sum (so the network is not hypersensitive to pixel noise),
    and BatchNorm running statistics calibrated on `images` (HxWx3 uint8 photos: two
    cumulative passes, so every layer's statistics match what it sees in eval mode).
    For tests and benchmarks of numerics (torch vs ONNX Runtime): default initialisation
    scores every anchor near the 0.01 prior and hides drift that these weights show."""
    import torch
    from torch import nn

    from smvision.models.efficientdet import EfficientDet, efficientdet_config
    from smvision.models.efficientdet.resize import preprocess_numpy

    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = EfficientDet(efficientdet_config(coef, num_classes=num_classes))
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Conv2d) and module.kernel_size[0] > 1:
                k = module.kernel_size[0]
                ax = torch.arange(k, dtype=torch.float32) - (k - 1) / 2
                gauss = torch.exp(-(ax[:, None] ** 2 + ax[None, :] ** 2) / (2 * (k / 3) ** 2))
                total = module.weight.sum(dim=(2, 3), keepdim=True)
                module.weight.mul_(0.3).add_(0.7 * total * gauss / gauss.sum())
        for norm in norms:
            norm.weight.copy_(0.5 + torch.rand(norm.weight.shape, generator=generator))
            norm.bias.copy_(0.2 * torch.randn(norm.bias.shape, generator=generator))
        batch, _ = preprocess_numpy(list(images), model.config.input_size, model.config.mean, model.config.std)
        for _ in range(2):
            model.eval()
            for norm in norms:
                norm.reset_running_stats()
                norm.momentum = None  # a cumulative average over the calibration batch
                norm.train()
            model(torch.from_numpy(batch))
    for norm in norms:
        norm.momentum = 0.01
    return model.eval()
