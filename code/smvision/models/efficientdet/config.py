"""EfficientDet D0-D8 hyper-parameters, as zylo117/Yet-Another-EfficientDet-Pytorch builds them.

Compound coefficient 8 is D7x: an EfficientNet-B7 backbone and a P3-P8 pyramid.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any


@dataclass(frozen=True)
class Variant:
    """One EfficientDet variant's hyper-parameters, as zylo117 sets them."""

    input_size: int
    backbone: int  # EfficientNet-bN
    backbone_channels: tuple[int, int, int]  # P3, P4, P5 out of the backbone
    fpn_channels: int
    fpn_repeats: int
    head_repeats: int
    max_level: int  # P7, or P8 for D7x
    anchor_scale: float = 4.0
    fast_attention: bool = True  # BiFPN fusion: fast normalised weights; False: a plain sum


#: compound coefficient -> its variant, one row each (8 is D7x)
VARIANTS: tuple[Variant, ...] = (
    Variant(input_size=512, backbone=0, backbone_channels=(40, 112, 320), fpn_channels=64, fpn_repeats=3, head_repeats=3, max_level=7),
    Variant(input_size=640, backbone=1, backbone_channels=(40, 112, 320), fpn_channels=88, fpn_repeats=4, head_repeats=3, max_level=7),
    Variant(input_size=768, backbone=2, backbone_channels=(48, 120, 352), fpn_channels=112, fpn_repeats=5, head_repeats=3, max_level=7),
    Variant(input_size=896, backbone=3, backbone_channels=(48, 136, 384), fpn_channels=160, fpn_repeats=6, head_repeats=4, max_level=7),
    Variant(input_size=1024, backbone=4, backbone_channels=(56, 160, 448), fpn_channels=224, fpn_repeats=7, head_repeats=4, max_level=7),
    Variant(input_size=1280, backbone=5, backbone_channels=(64, 176, 512), fpn_channels=288, fpn_repeats=7, head_repeats=4, max_level=7),
    Variant(input_size=1280, backbone=6, backbone_channels=(72, 200, 576), fpn_channels=384, fpn_repeats=8, head_repeats=5, max_level=7, fast_attention=False),
    Variant(input_size=1536, backbone=6, backbone_channels=(72, 200, 576), fpn_channels=384, fpn_repeats=8, head_repeats=5, max_level=7, anchor_scale=5.0, fast_attention=False),
    Variant(input_size=1536, backbone=7, backbone_channels=(80, 224, 640), fpn_channels=384, fpn_repeats=8, head_repeats=5, max_level=8, fast_attention=False),
)

MAX_COMPOUND_COEF = len(VARIANTS) - 1
DEFAULT_ANCHOR_SCALES: tuple[float, ...] = (2**0, 2 ** (1.0 / 3.0), 2 ** (2.0 / 3.0))
DEFAULT_ANCHOR_RATIOS: tuple[tuple[float, float], ...] = ((1.0, 1.0), (1.4, 0.7), (0.7, 1.4))
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)  # RGB
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)  # RGB


def _check_coef(compound_coef: Any) -> int:
    if isinstance(compound_coef, bool) or not isinstance(compound_coef, int):
        raise ValueError(f"compound_coef must be an integer 0-{MAX_COMPOUND_COEF}, got {compound_coef!r}")
    if not 0 <= compound_coef <= MAX_COMPOUND_COEF:
        raise ValueError(
            f"compound_coef must be 0-{MAX_COMPOUND_COEF} (8 is D7x), got {compound_coef}"
        )
    return compound_coef


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


@dataclass(frozen=True)
class EfficientDetConfig:
    """Everything needed to rebuild an EfficientDet; JSON-able through to_dict / from_dict."""

    compound_coef: int
    num_classes: int
    input_size: int
    backbone: str
    backbone_channels: tuple[int, int, int]
    fpn_channels: int
    fpn_repeats: int
    head_repeats: int
    pyramid_levels: tuple[int, ...]
    anchor_scale: float
    fast_attention: bool
    anchor_scales: tuple[float, ...] = DEFAULT_ANCHOR_SCALES
    anchor_ratios: tuple[tuple[float, float], ...] = DEFAULT_ANCHOR_RATIOS
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self) -> None:
        # Normalise JSON lists back to tuples, then validate.
        set_ = object.__setattr__
        set_(self, "backbone_channels", tuple(int(c) for c in self.backbone_channels))
        set_(self, "pyramid_levels", tuple(int(level) for level in self.pyramid_levels))
        set_(self, "anchor_scales", tuple(float(s) for s in self.anchor_scales))
        set_(self, "anchor_ratios", tuple((float(r[0]), float(r[1])) for r in self.anchor_ratios))
        set_(self, "mean", tuple(float(m) for m in self.mean))
        set_(self, "std", tuple(float(s) for s in self.std))
        set_(self, "anchor_scale", float(self.anchor_scale))
        set_(self, "fast_attention", bool(self.fast_attention))
        self._validate()

    def _validate(self) -> None:
        _check_coef(self.compound_coef)
        for name in ("num_classes", "input_size", "fpn_channels", "fpn_repeats", "head_repeats"):
            _positive_int(getattr(self, name), name)
        if not self.backbone.startswith("efficientnet-b") or not self.backbone[14:].isdigit():
            raise ValueError(f"backbone must be 'efficientnet-bN', got {self.backbone!r}")
        if len(self.backbone_channels) != 3:
            raise ValueError(f"backbone_channels must give P3/P4/P5 channels, got {self.backbone_channels}")
        if self.pyramid_levels not in ((3, 4, 5, 6, 7), (3, 4, 5, 6, 7, 8)):
            raise ValueError(f"pyramid_levels must be P3-P7 or P3-P8, got {self.pyramid_levels}")
        if self.fast_attention and self.max_level == 8:
            raise ValueError("fast-attention fusion is not defined for a P3-P8 pyramid (D7x sums)")
        stride = 2**self.max_level
        if self.input_size % stride:
            raise ValueError(f"input_size must be a multiple of {stride} (P{self.max_level}), got {self.input_size}")
        if not self.anchor_scales or not self.anchor_ratios:
            raise ValueError("anchor_scales and anchor_ratios must not be empty")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError("mean and std must be three numbers each, std positive")

    @property
    def max_level(self) -> int:
        """The coarsest pyramid level (7, or 8 for D7x)."""
        return self.pyramid_levels[-1]

    @property
    def num_anchors(self) -> int:
        """Anchors per feature-map location."""
        return len(self.anchor_scales) * len(self.anchor_ratios)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (tuples become lists)."""
        out = asdict(self)
        for key, value in out.items():
            if isinstance(value, tuple):
                out[key] = [list(v) if isinstance(v, tuple) else v for v in value]
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "EfficientDetConfig":
        """Rebuild from to_dict(); fields absent from d take the D{compound_coef} defaults."""
        if not isinstance(d, dict) or "compound_coef" not in d:
            raise ValueError("an EfficientDet config needs at least 'compound_coef'")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown EfficientDet config field(s): {', '.join(unknown)}")
        base = efficientdet_config(d["compound_coef"], d.get("num_classes", 90)).to_dict()
        base.update(d)
        return cls(**base)


def efficientdet_config(compound_coef: int, num_classes: int = 90) -> EfficientDetConfig:
    """zylo117's settings for EfficientDet D{compound_coef} (8 = D7x)."""
    c = _check_coef(compound_coef)
    v = VARIANTS[c]
    return EfficientDetConfig(
        compound_coef=c,
        num_classes=_positive_int(num_classes, "num_classes"),
        input_size=v.input_size,
        backbone=f"efficientnet-b{v.backbone}",
        backbone_channels=v.backbone_channels,
        fpn_channels=v.fpn_channels,
        fpn_repeats=v.fpn_repeats,
        head_repeats=v.head_repeats,
        pyramid_levels=tuple(range(3, v.max_level + 1)),
        anchor_scale=v.anchor_scale,
        fast_attention=v.fast_attention,
    )
