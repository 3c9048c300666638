"""Strict loading of zylo117 checkpoints, with errors that say what went wrong and why."""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch
from torch import Tensor

from .config import VARIANTS
from .model import EfficientDet

_SHOW = 5
_CLASS_HEADER = "classifier.header.pointwise_conv.conv.weight"
_FPN_PROBE = "bifpn.0.conv6_up.pointwise_conv.conv.weight"
_P3_PROBE = "bifpn.0.p3_down_channel.0.conv.weight"
_PIP_STYLE = re.compile(
    r"^backbone_net\.model\.(_conv_stem|_blocks\.\d+\."
    r"(_expand_conv|_depthwise_conv|_se_reduce|_se_expand|_project_conv))\.(weight|bias)$"
)
_OPTIONAL = ".num_batches_tracked"  # BatchNorm fills these in when a checkpoint lacks them


def strip_module_prefix(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Drop a leading 'module.' (what DataParallel / DistributedDataParallel save)."""
    keys = list(state_dict)
    if keys and all(k.startswith("module.") for k in keys):
        return {k[len("module."):]: v for k, v in state_dict.items()}
    return dict(state_dict)


def _guess_coef(state_dict: Mapping[str, Tensor]) -> int | None:
    """The compound coefficient a checkpoint's shapes point to, if one fits."""
    fpn = state_dict.get(_FPN_PROBE)
    p3 = state_dict.get(_P3_PROBE)
    if fpn is None or p3 is None:
        return None
    cells = {int(m.group(1)) for k in state_dict if (m := re.match(r"bifpn\.(\d+)\.", k))}
    has_p8 = any(k.startswith("bifpn.0.conv8_down.") for k in state_dict)
    for coef, variant in enumerate(VARIANTS):
        if (
            variant.fpn_channels == fpn.shape[0]
            and variant.backbone_channels[0] == p3.shape[1]
            and variant.fpn_repeats == len(cells)
            and (variant.max_level == 8) == has_p8
        ):
            return coef  # D6 and D7 share every shape; the first match is reported
    return None


def _hints(model: EfficientDet, state_dict: Mapping[str, Tensor], unexpected: list[str]) -> list[str]:
    config = model.config
    hints = []
    pip_style = [k for k in unexpected if _PIP_STYLE.match(k)]
    if pip_style:
        hints.append(
            f"{len(pip_style)} backbone key(s) look like the pip efficientnet_pytorch layout (e.g. "
            f"'{pip_style[0]}'); zylo117 checkpoints name them with an extra '.conv' "
            "(e.g. 'backbone_net.model._conv_stem.conv.weight'): this is not a zylo117 checkpoint"
        )
    header = state_dict.get(_CLASS_HEADER)
    if header is not None and header.ndim == 4 and header.shape[0] % config.num_anchors == 0:
        classes = header.shape[0] // config.num_anchors
        if classes != config.num_classes:
            hints.append(
                f"the checkpoint's classifier has {classes} classes but the model {config.num_classes}: "
                "give the class list the weights were trained with"
            )
    coef = _guess_coef(state_dict)
    if coef is not None and coef != config.compound_coef and not (
        {coef, config.compound_coef} == {6, 7}
    ):
        hints.append(
            f"the checkpoint looks like EfficientDet D{coef}, the model is D{config.compound_coef}: "
            "check the compound coefficient"
        )
    if not hints:
        hints.append(
            f"check that the weights are a zylo117 EfficientDet D{config.compound_coef} state_dict "
            f"with {config.num_classes} classes"
        )
    return hints


def _listing(label: str, items: list[str]) -> str:
    shown = ", ".join(items[:_SHOW]) + (", ..." if len(items) > _SHOW else "")
    return f"{len(items)} {label} ({shown})"


def load_zylo117_state_dict(model: EfficientDet, state_dict: Mapping[str, Tensor], assign: bool = False) -> None:
    """Load a zylo117 checkpoint strictly; ValueError with a diagnosis when it does not fit.

    assign=True: the model takes the checkpoint's tensors themselves (for a model built
    on the meta device; see torch.nn.Module.load_state_dict).
    """
    if not isinstance(state_dict, Mapping) or not state_dict:
        raise ValueError(
            f"expected a non-empty state_dict (a mapping of names to tensors), got {type(state_dict).__name__}"
        )
    if not any(isinstance(v, Tensor) for v in state_dict.values()):
        raise ValueError(
            "this is not a state_dict (no tensor values); top-level keys: "
            + ", ".join(map(str, list(state_dict)[:_SHOW]))
            + " - pass the model weights themselves"
        )
    if getattr(model, "batchnorm_fused", False):
        raise ValueError(
            "this EfficientDet has its BatchNorm folded (inference copy): load weights before fuse_batchnorm()"
        )
    state_dict = strip_module_prefix(state_dict)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict and not k.endswith(_OPTIONAL)]
    unexpected = [k for k in state_dict if k not in expected]
    mismatched = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
        for k, v in state_dict.items()
        if k in expected and isinstance(v, Tensor) and v.shape != expected[k].shape
    ]
    if missing or unexpected or mismatched:
        config = model.config
        problems = [
            _listing(label, items)
            for label, items in (
                ("missing key(s)", missing),
                ("unexpected key(s)", unexpected),
                ("shape mismatch(es)", mismatched),
            )
            if items
        ]
        raise ValueError(
            f"the weights do not fit EfficientDet D{config.compound_coef} with {config.num_classes} classes: "
            + "; ".join(problems)
            + ". Likely cause: "
            + "; ".join(_hints(model, state_dict, unexpected))
            + "."
        )
    with torch.no_grad():
        model.load_state_dict(state_dict, strict=True, assign=assign)
