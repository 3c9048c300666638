"""EfficientDet in zylo117's layout: keys, shapes, anchors, pre/postprocessing, detector.

The reference functions below restate zylo117/Yet-Another-EfficientDet-Pytorch's
behaviour independently (key names from its module tree, its padding formula, its
fusion order, its Anchors / BBoxTransform / ClipBoxes / invert_affine), so the model
is checked against that spec rather than against itself.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from devtools.weights import random_state_dict
from smvision.models.efficientdet import (
    Detections,
    EfficientDet,
    EfficientDetConfig,
    EfficientDetector,
    efficientdet_config,
    generate_anchors,
    load_zylo117_state_dict,
)
from smvision.models.efficientdet.bifpn import BiFPN
from smvision.models.efficientdet.postprocess import AnchorGeometry, postprocess
from smvision.models.efficientdet.preprocess import Resized, preprocess, resized_size
from support import spread_scores_d0

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    np.random.seed(0)


# --------------------------------------------------------------------------------------
# zylo117's key layout, written out from its module tree (not from our model)
# --------------------------------------------------------------------------------------

# width, depth per efficientnet-bN; stages as (kernel, repeats, stride, expand, in, out).
_EFFNET_COEFS = [(1.0, 1.0), (1.0, 1.1), (1.1, 1.2), (1.2, 1.4), (1.4, 1.8), (1.6, 2.2), (1.8, 2.6), (2.0, 3.1)]
_B0_STAGES = [(3, 1, 1, 1, 32, 16), (3, 2, 2, 6, 16, 24), (5, 2, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
              (5, 3, 1, 6, 80, 112), (5, 4, 2, 6, 112, 192), (3, 1, 1, 6, 192, 320)]


def _round_filters(filters: int, width: float) -> int:
    filters *= width
    new = max(8, int(filters + 4) // 8 * 8)
    return int(new + 8 if new < 0.9 * filters else new)


def effnet_blocks(b: int) -> list[tuple[int, int, int, int, int]]:
    """(kernel, stride, expand, in, out) per block of efficientnet-b{b}."""
    width, depth = _EFFNET_COEFS[b]
    blocks = []
    for k, r, s, e, i, o in _B0_STAGES:
        i, o = _round_filters(i, width), _round_filters(o, width)
        for n in range(int(math.ceil(depth * r))):
            blocks.append((k, s if n == 0 else 1, e, i if n == 0 else o, o))
    return blocks


def _bn(prefix: str, c: int) -> dict[str, tuple[int, ...]]:
    return {f"{prefix}.{n}": (c,) for n in ("weight", "bias", "running_mean", "running_var")} | {
        f"{prefix}.num_batches_tracked": ()
    }


def _sep(prefix: str, cin: int, cout: int, norm: bool) -> dict[str, tuple[int, ...]]:
    keys = {
        f"{prefix}.depthwise_conv.conv.weight": (cin, 1, 3, 3),
        f"{prefix}.pointwise_conv.conv.weight": (cout, cin, 1, 1),
        f"{prefix}.pointwise_conv.conv.bias": (cout,),
    }
    return keys | (_bn(f"{prefix}.bn", cout) if norm else {})


def _proj(prefix: str, cin: int, cout: int) -> dict[str, tuple[int, ...]]:
    return {f"{prefix}.0.conv.weight": (cout, cin, 1, 1), f"{prefix}.0.conv.bias": (cout,)} | _bn(f"{prefix}.1", cout)


def zylo117_keys(coef: int, num_classes: int = 90) -> dict[str, tuple[int, ...]]:
    """Every state_dict key of zylo117's EfficientDetBackbone(compound_coef=coef) with its shape."""
    b = [0, 1, 2, 3, 4, 5, 6, 6, 7][coef]
    c = [64, 88, 112, 160, 224, 288, 384, 384, 384][coef]
    cells = [3, 4, 5, 6, 7, 7, 8, 8, 8][coef]
    layers = [3, 3, 3, 4, 4, 4, 5, 5, 5][coef]
    levels = 6 if coef == 8 else 5
    c3, c4, c5 = [(40, 112, 320), (40, 112, 320), (48, 120, 352), (48, 136, 384), (56, 160, 448),
                  (64, 176, 512), (72, 200, 576), (72, 200, 576), (80, 224, 640)][coef]
    keys: dict[str, tuple[int, ...]] = {}
    for cell in range(cells):
        p = f"bifpn.{cell}"
        for name, n in (("p6_w1", 2), ("p5_w1", 2), ("p4_w1", 2), ("p3_w1", 2),
                        ("p4_w2", 3), ("p5_w2", 3), ("p6_w2", 3), ("p7_w2", 2)):
            keys[f"{p}.{name}"] = (n,)
        convs = ["conv6_up", "conv5_up", "conv4_up", "conv3_up", "conv4_down", "conv5_down", "conv6_down", "conv7_down"]
        if levels == 6:
            convs += ["conv7_up", "conv8_down"]
        for conv in convs:
            keys |= _sep(f"{p}.{conv}", c, c, norm=True)
        if cell == 0:
            for name, cin in (("p5_down_channel", c5), ("p4_down_channel", c4), ("p3_down_channel", c3),
                              ("p5_to_p6", c5), ("p4_down_channel_2", c4), ("p5_down_channel_2", c5)):
                keys |= _proj(f"{p}.{name}", cin, c)
    for head, outputs in (("regressor", 9 * 4), ("classifier", 9 * num_classes)):
        for i in range(layers):
            keys |= _sep(f"{head}.conv_list.{i}", c, c, norm=False)
        for level, i in itertools.product(range(levels), range(layers)):
            keys |= _bn(f"{head}.bn_list.{level}.{i}", c)
        keys |= _sep(f"{head}.header", c, outputs, norm=False)
    m = "backbone_net.model"
    stem = _round_filters(32, _EFFNET_COEFS[b][0])
    keys[f"{m}._conv_stem.conv.weight"] = (stem, 3, 3, 3)
    keys |= _bn(f"{m}._bn0", stem)
    for n, (k, _s, e, i, o) in enumerate(effnet_blocks(b)):
        p, mid, sq = f"{m}._blocks.{n}", i * e, max(1, int(i * 0.25))
        if e != 1:
            keys[f"{p}._expand_conv.conv.weight"] = (mid, i, 1, 1)
            keys |= _bn(f"{p}._bn0", mid)
        keys[f"{p}._depthwise_conv.conv.weight"] = (mid, 1, k, k)
        keys |= _bn(f"{p}._bn1", mid)
        keys |= {f"{p}._se_reduce.conv.weight": (sq, mid, 1, 1), f"{p}._se_reduce.conv.bias": (sq,),
                 f"{p}._se_expand.conv.weight": (mid, sq, 1, 1), f"{p}._se_expand.conv.bias": (mid,)}
        keys[f"{p}._project_conv.conv.weight"] = (o, mid, 1, 1)
        keys |= _bn(f"{p}._bn2", o)
    return keys


# --------------------------------------------------------------------------------------
# zylo117's forward pass, restated functionally over a state_dict
# --------------------------------------------------------------------------------------

def _tf_pad(x, k, s):
    h, w = x.shape[-2:]
    extra_w = (math.ceil(w / s) - 1) * s - w + k
    extra_h = (math.ceil(h / s) - 1) * s - h + k
    return F.pad(x, [extra_w // 2, extra_w - extra_w // 2, extra_h // 2, extra_h - extra_h // 2])


def _conv(sd, p, x, stride=1, groups=1):
    w = sd[f"{p}.weight"]
    return F.conv2d(_tf_pad(x, w.shape[-1], stride), w, sd.get(f"{p}.bias"), stride, 0, 1, groups)


def _bnf(sd, p, x):
    return F.batch_norm(x, sd[f"{p}.running_mean"], sd[f"{p}.running_var"], sd[f"{p}.weight"], sd[f"{p}.bias"],
                        False, 0.0, 1e-3)


def _swish(x):
    return x * torch.sigmoid(x)


def _pool(x):
    return F.max_pool2d(_tf_pad(x, 3, 2), 3, 2)  # zero padding, as zylo117


def _up(x):
    return F.interpolate(x, scale_factor=2, mode="nearest")


def _sepconv(sd, p, x, norm=True):
    c = x.shape[1]
    x = _conv(sd, f"{p}.pointwise_conv.conv", _conv(sd, f"{p}.depthwise_conv.conv", x, groups=c))
    return _bnf(sd, f"{p}.bn", x) if norm else x


def ref_backbone(sd, x, b=0):
    m = "backbone_net.model"
    x = _swish(_bnf(sd, f"{m}._bn0", _conv(sd, f"{m}._conv_stem.conv", x, stride=2)))
    feature_maps, last_x = [], None
    blocks = effnet_blocks(b)
    for n, (k, s, e, i, o) in enumerate(blocks):
        p, inputs = f"{m}._blocks.{n}", x
        if e != 1:
            x = _swish(_bnf(sd, f"{p}._bn0", _conv(sd, f"{p}._expand_conv.conv", x)))
        x = _swish(_bnf(sd, f"{p}._bn1", _conv(sd, f"{p}._depthwise_conv.conv", x, stride=s, groups=x.shape[1])))
        sq = _conv(sd, f"{p}._se_expand.conv", _swish(_conv(sd, f"{p}._se_reduce.conv", F.adaptive_avg_pool2d(x, 1))))
        x = torch.sigmoid(sq) * x
        x = _bnf(sd, f"{p}._bn2", _conv(sd, f"{p}._project_conv.conv", x))
        if s == 1 and i == o:
            x = x + inputs
        if s == 2:
            feature_maps.append(last_x)
        elif n == len(blocks) - 1:
            feature_maps.append(x)
        last_x = x
    _, p3, p4, p5 = feature_maps[1:]
    return p3, p4, p5


def ref_bifpn_cell(sd, p, inputs, first, attention, use_p8):
    def w(name):
        v = torch.relu(sd[f"{p}.{name}"])
        return v / (torch.sum(v, dim=0) + 1e-4)

    def fuse(name, *xs):
        if not attention:
            return _swish(sum(xs[1:], xs[0]))
        wt = w(name)
        out = wt[0] * xs[0]
        for j in range(1, len(xs)):
            out = out + wt[j] * xs[j]
        return _swish(out)

    def proj(name, x):
        return _bnf(sd, f"{p}.{name}.1", _conv(sd, f"{p}.{name}.0.conv", x))

    if first:
        p3, p4, p5 = inputs
        p6_in = _pool(proj("p5_to_p6", p5))
        p7_in = _pool(p6_in)
        p8_in = _pool(p7_in) if use_p8 else None
        p3_in, p4_in, p5_in = proj("p3_down_channel", p3), proj("p4_down_channel", p4), proj("p5_down_channel", p5)
    elif use_p8:
        p3_in, p4_in, p5_in, p6_in, p7_in, p8_in = inputs
    else:
        p3_in, p4_in, p5_in, p6_in, p7_in = inputs
    if use_p8:
        p7_up = _sepconv(sd, f"{p}.conv7_up", fuse("p7_w1", p7_in, _up(p8_in)))
        p6_up = _sepconv(sd, f"{p}.conv6_up", fuse("p6_w1", p6_in, _up(p7_up)))
    else:
        p6_up = _sepconv(sd, f"{p}.conv6_up", fuse("p6_w1", p6_in, _up(p7_in)))
    p5_up = _sepconv(sd, f"{p}.conv5_up", fuse("p5_w1", p5_in, _up(p6_up)))
    p4_up = _sepconv(sd, f"{p}.conv4_up", fuse("p4_w1", p4_in, _up(p5_up)))
    p3_out = _sepconv(sd, f"{p}.conv3_up", fuse("p3_w1", p3_in, _up(p4_up)))
    if first:
        p4_in, p5_in = proj("p4_down_channel_2", p4), proj("p5_down_channel_2", p5)
    p4_out = _sepconv(sd, f"{p}.conv4_down", fuse("p4_w2", p4_in, p4_up, _pool(p3_out)))
    p5_out = _sepconv(sd, f"{p}.conv5_down", fuse("p5_w2", p5_in, p5_up, _pool(p4_out)))
    p6_out = _sepconv(sd, f"{p}.conv6_down", fuse("p6_w2", p6_in, p6_up, _pool(p5_out)))
    if use_p8:
        p7_out = _sepconv(sd, f"{p}.conv7_down", fuse(None, p7_in, p7_up, _pool(p6_out)))
        p8_out = _sepconv(sd, f"{p}.conv8_down", fuse(None, p8_in, _pool(p7_out)))
        return p3_out, p4_out, p5_out, p6_out, p7_out, p8_out
    p7_out = _sepconv(sd, f"{p}.conv7_down", fuse("p7_w2", p7_in, _pool(p6_out)))
    return p3_out, p4_out, p5_out, p6_out, p7_out


def ref_head(sd, p, feats, layers, per_anchor):
    outs = []
    for level, feat in enumerate(feats):
        for i in range(layers):
            feat = _swish(_bnf(sd, f"{p}.bn_list.{level}.{i}", _sepconv(sd, f"{p}.conv_list.{i}", feat, norm=False)))
        feat = _sepconv(sd, f"{p}.header", feat, norm=False).permute(0, 2, 3, 1)
        b, h, w = feat.shape[:3]
        outs.append(feat.reshape(b, h, w, 9, per_anchor).reshape(b, -1, per_anchor))
    return torch.cat(outs, dim=1)


def ref_efficientdet_d0(sd, x, num_classes):
    feats = ref_backbone(sd, x)
    for cell in range(3):
        feats = ref_bifpn_cell(sd, f"bifpn.{cell}", feats, cell == 0, attention=True, use_p8=False)
    return ref_head(sd, "regressor", feats, 3, 4), ref_head(sd, "classifier", feats, 3, num_classes).sigmoid()


def ref_anchors(size_hw, levels, anchor_scale):
    """zylo117's Anchors.forward, in numpy."""
    boxes_all = []
    for stride in [2**x for x in levels]:
        boxes_level = []
        for scale, ratio in itertools.product([2**0, 2 ** (1.0 / 3.0), 2 ** (2.0 / 3.0)],
                                              [(1.0, 1.0), (1.4, 0.7), (0.7, 1.4)]):
            base = anchor_scale * stride * scale
            ax2, ay2 = base * ratio[0] / 2.0, base * ratio[1] / 2.0
            xv, yv = np.meshgrid(np.arange(stride / 2, size_hw[1], stride), np.arange(stride / 2, size_hw[0], stride))
            xv, yv = xv.reshape(-1), yv.reshape(-1)
            boxes = np.vstack((yv - ay2, xv - ax2, yv + ay2, xv + ax2)).swapaxes(0, 1)
            boxes_level.append(np.expand_dims(boxes, axis=1))
        boxes_all.append(np.concatenate(boxes_level, axis=1).reshape([-1, 4]))
    return np.vstack(boxes_all).astype(np.float32)


# --------------------------------------------------------------------------------------
# config
# --------------------------------------------------------------------------------------

def test_config_table_and_json_round_trip():
    table = {  # coef: input, backbone, fpn channels, repeats, head repeats, max level, anchor scale
        0: (512, "efficientnet-b0", 64, 3, 3, 7, 4.0),
        1: (640, "efficientnet-b1", 88, 4, 3, 7, 4.0),
        5: (1280, "efficientnet-b5", 288, 7, 4, 7, 4.0),
        6: (1280, "efficientnet-b6", 384, 8, 5, 7, 4.0),
        7: (1536, "efficientnet-b6", 384, 8, 5, 7, 5.0),
        8: (1536, "efficientnet-b7", 384, 8, 5, 8, 4.0),
    }
    for coef in range(9):
        cfg = efficientdet_config(coef, num_classes=7)
        if coef in table:
            got = (cfg.input_size, cfg.backbone, cfg.fpn_channels, cfg.fpn_repeats, cfg.head_repeats,
                   cfg.pyramid_levels[-1], cfg.anchor_scale)
            assert got == table[coef]
            assert cfg.pyramid_levels[0] == 3
        assert cfg.fast_attention == (coef < 6)
        assert cfg.num_anchors == 9
        again = EfficientDetConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
        assert again == cfg
    assert efficientdet_config(0).num_classes == 90


@pytest.mark.parametrize("bad", [-1, 9, 2.0, True, "0"])
def test_config_rejects_bad_compound_coef(bad):
    with pytest.raises(ValueError, match="compound_coef"):
        efficientdet_config(bad)


def test_config_from_dict_rejects_unknown_fields_and_bad_input_size():
    d = efficientdet_config(0).to_dict()
    with pytest.raises(ValueError, match="unknown"):
        EfficientDetConfig.from_dict(d | {"colour": "red"})
    with pytest.raises(ValueError, match="multiple of 128"):
        EfficientDetConfig.from_dict(d | {"input_size": 500})
    # A manifest with only the essentials gets the D{coef} defaults.
    assert EfficientDetConfig.from_dict({"compound_coef": 2, "num_classes": 3}) == efficientdet_config(2, 3)


# --------------------------------------------------------------------------------------
# state_dict layout
# --------------------------------------------------------------------------------------

def _shapes(model):
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def test_d0_state_dict_is_zylo117_layout():
    model = EfficientDet(efficientdet_config(0))
    shapes = _shapes(model)
    assert len(shapes) == 784
    assert shapes == zylo117_keys(0)
    known = {  # spot checks straight from zylo117's module tree
        "backbone_net.model._conv_stem.conv.weight": (32, 3, 3, 3),
        "backbone_net.model._blocks.15._project_conv.conv.weight": (320, 1152, 1, 1),
        "bifpn.0.conv6_up.depthwise_conv.conv.weight": (64, 1, 3, 3),
        "bifpn.0.p5_to_p6.0.conv.weight": (64, 320, 1, 1),
        "bifpn.0.p3_down_channel.0.conv.weight": (64, 40, 1, 1),
        "bifpn.2.p4_w2": (3,),
        "regressor.header.pointwise_conv.conv.weight": (36, 64, 1, 1),
        "classifier.header.pointwise_conv.conv.weight": (810, 64, 1, 1),
        "classifier.bn_list.4.2.running_var": (64,),
    }
    assert {k: shapes[k] for k in known} == known
    assert "backbone_net.model._conv_stem.weight" not in shapes
    assert not any(k.startswith(("backbone_net.model._fc", "backbone_net.model._conv_head")) for k in shapes)
    assert round(sum(p.numel() for p in model.parameters()) / 1e6, 2) == 3.88


@pytest.mark.parametrize("coef", [2, 8])
def test_larger_models_match_zylo117_layout(coef):
    model = EfficientDet(efficientdet_config(coef, num_classes=5))
    shapes = _shapes(model)
    assert shapes == zylo117_keys(coef, num_classes=5)
    if coef == 8:  # D7x: P3-P8, six BNs per head layer
        assert "bifpn.7.conv8_down.bn.weight" in shapes and "regressor.bn_list.5.4.weight" in shapes


@torch.inference_mode()
def test_p3_p8_model_runs_end_to_end():
    """D7x's P8 wiring on a shrunken model (a real D7x forward is too slow for CI)."""
    cfg = dataclasses.replace(efficientdet_config(8, num_classes=5), backbone="efficientnet-b0",
                              backbone_channels=(40, 112, 320), fpn_channels=16, fpn_repeats=2, head_repeats=1,
                              input_size=256)
    regression, classification = EfficientDet(cfg).eval()(torch.randn(1, 3, 256, 256))
    assert regression.shape == (1, 9 * sum(4**k for k in range(6)), 4)  # 32^2 + 16^2 + ... + 1^2 locations
    assert classification.shape == (1, regression.shape[1], 5)


# --------------------------------------------------------------------------------------
# forward
# --------------------------------------------------------------------------------------

@torch.inference_mode()
def test_d0_and_d1_output_shapes():
    # D0 at a small 256 (its 49,104 anchors at 512 are checked below), D1 at its own 640.
    for coef, size, anchors in ((0, 256, 9 * (32**2 + 16**2 + 8**2 + 4**2 + 2**2)),
                                (1, 640, 9 * (80**2 + 40**2 + 20**2 + 10**2 + 5**2))):
        model = EfficientDet(efficientdet_config(coef, num_classes=4)).eval()
        regression, classification = model(torch.randn(1, 3, size, size))
        assert regression.shape == (1, anchors, 4)
        assert classification.shape == (1, anchors, 4)
        assert 0.0 <= classification.min() and classification.max() <= 1.0


@torch.inference_mode()
def test_zylo117_state_dict_loads_strictly_and_reproduces_its_forward():
    shapes = zylo117_keys(0, num_classes=6)
    sd = random_state_dict(shapes)
    model = EfficientDet(efficientdet_config(0, num_classes=6))
    load_zylo117_state_dict(model, sd)
    assert all(torch.equal(v, sd[k]) for k, v in model.state_dict().items())
    model.eval()
    x = torch.randn(1, 3, 384, 384)  # 384: P7 is 3x3, odd sizes exercise SAME padding
    expected = ref_efficientdet_d0(sd, x, 6)
    got = model(x)
    got_cl = model.to(memory_format=torch.channels_last)(x.contiguous(memory_format=torch.channels_last))
    for e, g, h in zip(expected, got, got_cl):
        assert g.shape == e.shape
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(h, e, rtol=1e-4, atol=1e-4)
    assert expected[0].std() > 0.1 and expected[1].std() > 0.02  # outputs are not trivially flat


@torch.inference_mode()
@pytest.mark.parametrize("attention,use_p8", [(False, True), (False, False), (True, False)])
def test_bifpn_cells_match_zylo117(attention, use_p8):
    cells = [BiFPN(8, (4, 6, 10), first_time=True, attention=attention, use_p8=use_p8),
             BiFPN(8, (4, 6, 10), first_time=False, attention=attention, use_p8=use_p8)]
    p3 = 64 if use_p8 else 48  # P3-P7 at 48: P7 is 3x3 (odd, asymmetric SAME pooling)
    feats = (torch.randn(1, 4, p3, p3), torch.randn(1, 6, p3 // 2, p3 // 2), torch.randn(1, 10, p3 // 4, p3 // 4))
    expected = feats
    for i, cell in enumerate(cells):
        sd = random_state_dict({k: tuple(v.shape) for k, v in cell.state_dict().items()}, seed=i + 3)
        cell.load_state_dict(sd)
        cell.eval()
        expected = ref_bifpn_cell({f".{k}": v for k, v in sd.items()}, "", expected, i == 0, attention, use_p8)
        feats = cell(feats)
    assert len(feats) == (6 if use_p8 else 5)
    assert [f.shape[-1] for f in feats] == [p3 >> i for i in range(len(feats))]
    for g, e in zip(feats, expected):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------------------
# anchors
# --------------------------------------------------------------------------------------

def test_d0_anchors_count_order_and_values():
    cfg = efficientdet_config(0)
    anchors = generate_anchors((512, 512), cfg.pyramid_levels, cfg.anchor_scale, cfg.anchor_scales, cfg.anchor_ratios)
    assert anchors.shape == (49104, 4) and anchors.dtype == torch.float32
    c = 2 ** (1 / 3) * 32 / 2  # half size of scale 2^(1/3) at P3 (base 4 * 8)
    hand = torch.tensor([
        [-12.0, -12.0, 20.0, 20.0],            # P3, centre (4, 4), scale 1, ratio (1, 1)
        [4 - 11.2, 4 - 22.4, 4 + 11.2, 4 + 22.4],  # ratio (1.4, 0.7): x gets 1.4
        [4 - 22.4, 4 - 11.2, 4 + 22.4, 4 + 11.2],  # ratio (0.7, 1.4)
        [4 - c, 4 - c, 4 + c, 4 + c],          # next scale
    ])
    torch.testing.assert_close(anchors[:4], hand)
    torch.testing.assert_close(anchors[9], torch.tensor([-12.0, -4.0, 20.0, 28.0]))  # x moves first
    torch.testing.assert_close(anchors[9 * 64], torch.tensor([-4.0, -12.0, 28.0, 20.0]))  # then y
    torch.testing.assert_close(anchors[9 * 64 * 64], torch.tensor([-24.0, -24.0, 40.0, 40.0]))  # P4 starts
    np.testing.assert_array_equal(anchors.numpy(), ref_anchors((512, 512), range(3, 8), 4.0))


def test_d7_and_d7x_anchors_match_zylo117():
    for coef in (7, 8):
        cfg = efficientdet_config(coef)
        got = generate_anchors((1536, 1536), cfg.pyramid_levels, cfg.anchor_scale, cfg.anchor_scales, cfg.anchor_ratios)
        np.testing.assert_array_equal(got.numpy(), ref_anchors((1536, 1536), cfg.pyramid_levels, cfg.anchor_scale))
    with pytest.raises(ValueError, match="multiple"):
        generate_anchors((500, 512), range(3, 8), 4.0, (1.0,), ((1.0, 1.0),))


# --------------------------------------------------------------------------------------
# checkpoint loading
# --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def d0_weights():
    return random_state_dict(zylo117_keys(0))


def test_module_prefix_is_stripped(d0_weights):
    model = EfficientDet(efficientdet_config(0))
    load_zylo117_state_dict(model, {f"module.{k}": v for k, v in d0_weights.items()})
    key = "classifier.header.pointwise_conv.conv.weight"
    assert torch.equal(model.state_dict()[key], d0_weights[key])


def test_missing_and_renamed_keys_explained(d0_weights):
    model = EfficientDet(efficientdet_config(0))
    broken = dict(d0_weights)
    del broken["bifpn.1.conv4_up.bn.weight"]
    with pytest.raises(ValueError) as err:
        load_zylo117_state_dict(model, broken)
    msg = str(err.value)
    assert "1 missing key(s)" in msg and "bifpn.1.conv4_up.bn.weight" in msg and "unexpected" not in msg
    broken["bifpn.1.conv4_up.bn.wieght"] = d0_weights["bifpn.1.conv4_up.bn.weight"]
    with pytest.raises(ValueError, match=r"1 missing key\(s\).*1 unexpected key\(s\) \(bifpn.1.conv4_up.bn.wieght\)"):
        load_zylo117_state_dict(model, broken)


def test_wrong_num_classes_explained(d0_weights):
    model = EfficientDet(efficientdet_config(0, num_classes=80))
    with pytest.raises(ValueError) as err:
        load_zylo117_state_dict(model, d0_weights)
    msg = str(err.value)
    assert "shape mismatch" in msg and "(810, 64, 1, 1)" in msg and "(720, 64, 1, 1)" in msg
    assert "90 classes" in msg and "80" in msg


def test_wrong_compound_coef_explained(d0_weights):
    model = EfficientDet(efficientdet_config(1))
    with pytest.raises(ValueError, match=r"looks like EfficientDet D0, the model is D1"):
        load_zylo117_state_dict(model, d0_weights)


def test_pip_efficientnet_keys_explained(d0_weights):
    def pip_name(k):
        return k.replace(".conv.weight", ".weight").replace(".conv.bias", ".bias") if k.startswith("backbone") else k

    pip_style = {pip_name(k): v for k, v in d0_weights.items()}
    with pytest.raises(ValueError, match=r"pip efficientnet_pytorch layout.*'\.conv'"):
        load_zylo117_state_dict(EfficientDet(efficientdet_config(0)), pip_style)


def test_not_a_state_dict_explained(d0_weights):
    with pytest.raises(ValueError, match="not a state_dict"):
        load_zylo117_state_dict(EfficientDet(efficientdet_config(0)), {"model": dict(d0_weights), "epoch": 3})


# --------------------------------------------------------------------------------------
# preprocessing
# --------------------------------------------------------------------------------------

def test_resize_size_rule():
    assert resized_size(480, 640, 512) == (384, 512)   # landscape: width is long
    assert resized_size(640, 480, 512) == (512, 384)   # portrait
    assert resized_size(333, 500, 512) == (340, 512)   # int() truncates 340.99
    assert resized_size(49, 49, 512) == (512, 511)     # square: float 512/49*49 = 511.99..
    assert resized_size(100, 100, 512) == (512, 512)


@pytest.mark.parametrize("shape", [(300, 457, 3), (61, 40, 3), (512, 300, 3), (49, 49, 3), (1100, 1700, 3)])
def test_preprocess_equals_cv2_inter_linear(shape):
    cv2 = pytest.importorskip("cv2")
    image = np.random.randint(0, 256, shape, dtype=np.uint8)
    batch, fits = preprocess([image], 512, MEAN, STD)
    assert batch.shape == (1, 3, 512, 512) and batch.is_contiguous(memory_format=torch.channels_last)
    # zylo117: float64 normalise, cv2.resize (INTER_LINEAR) unless the size is unchanged, zero canvas.
    normalised = (image / 255 - np.array(MEAN)) / np.array(STD)
    new_h, new_w = resized_size(shape[0], shape[1], 512)
    if (new_h, new_w) != shape[:2]:
        normalised = cv2.resize(normalised, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    canvas = np.zeros((512, 512, 3), np.float32)
    canvas[:new_h, :new_w] = normalised
    np.testing.assert_allclose(batch[0].permute(1, 2, 0).numpy(), canvas, atol=2e-6, rtol=0)
    assert fits == [Resized(old_w=shape[1], old_h=shape[0], new_w=new_w, new_h=new_h)]


def test_preprocess_leaves_read_only_input_alone():
    image = np.random.randint(0, 256, (90, 120, 3), dtype=np.uint8)
    image.setflags(write=False)  # as np.asarray(PIL image) gives
    before = image.copy()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        preprocess([image, image[:, ::-1], np.ascontiguousarray(image[:64, :64])], 64, MEAN, STD)
    np.testing.assert_array_equal(image, before)


def test_preprocess_rejects_non_rgb_uint8():
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        preprocess([np.zeros((10, 10), np.uint8)], 512, MEAN, STD)
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        preprocess([np.zeros((10, 10, 3), np.float32)], 512, MEAN, STD)


# --------------------------------------------------------------------------------------
# postprocessing
# --------------------------------------------------------------------------------------

def _hand_case():
    """Four anchors on a 16x16 input, three classes."""
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0],   # A0
                            [1.0, 1.0, 11.0, 11.0],   # A1: IoU 90/160 = 0.56 with decoded A0
                            [2.0, 2.0, 8.0, 8.0],     # A2
                            [0.0, 0.0, 10.0, 10.0]])  # A3: A0's box, another class
    regression = torch.zeros(1, 4, 4)
    regression[0, 0] = torch.tensor([0.1, 0.0, math.log(2.0), 0.0])  # centre y 5+1, h 20: y -4..16
    regression[0, 3] = torch.tensor([0.0, 0.0, 0.0, math.log(3.0)])  # w 30: x -10..20
    classification = torch.zeros(1, 4, 3)
    classification[0, 0, 0] = 0.9
    classification[0, 1, 0] = 0.8
    classification[0, 2, 1] = 0.3
    classification[0, 3] = torch.tensor([0.1, 0.2, 0.7])
    return AnchorGeometry.from_boxes(anchors), regression, classification


def test_postprocess_hand_built_case():
    geometry, regression, classification = _hand_case()
    fit = Resized(old_w=32, old_h=64, new_w=16, new_h=16)  # ratios 0.5 (x), 0.25 (y)
    (found,) = postprocess(regression, classification, geometry, (16, 16), [0.4], [0.5], [fit])
    # A1 is suppressed by A0 (same class, IoU 0.56); A2 is under the threshold; A3 survives (class 2).
    # A0: y -4..16 clipped to 0..15, x 0..10.  A3: x -10..20 -> 0..15 (x2 <= width - 1), y 0..10.
    np.testing.assert_allclose(found.boxes, [[0 / 0.5, 0 / 0.25, 10 / 0.5, 15 / 0.25],
                                             [0 / 0.5, 0 / 0.25, 15 / 0.5, 10 / 0.25]], rtol=1e-6)
    np.testing.assert_allclose(found.scores, [0.9, 0.7], rtol=1e-6)
    np.testing.assert_array_equal(found.class_ids, [0, 2])
    assert found.boxes.dtype == np.float32 and found.scores.dtype == np.float32 and found.class_ids.dtype == np.int64


def test_postprocess_per_image_thresholds_in_one_batch():
    geometry, regression, classification = _hand_case()
    fit = Resized(old_w=16, old_h=16, new_w=16, new_h=16)
    found = postprocess(regression.expand(3, -1, -1), classification.expand(3, -1, -1), geometry, (16, 16),
                        [0.75, 0.5, 0.95], [0.5, 0.9, 0.5], [fit] * 3)
    assert [d.class_ids.tolist() for d in found] == [[0], [0, 0, 2], []]
    np.testing.assert_allclose(found[1].scores, [0.9, 0.8, 0.7], rtol=1e-6)
    np.testing.assert_allclose(found[1].boxes[1], [1, 1, 11, 11])  # A1 kept when IoU threshold is 0.9
    assert found[2].boxes.shape == (0, 4)


# --------------------------------------------------------------------------------------
# detector
# --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def small_model():
    """A D0 at input size 256 whose scores spread, so thresholds select a few dozen boxes."""
    return spread_scores_d0()


@pytest.fixture(scope="module")
def small_detector(small_model):
    return EfficientDetector(small_model.config, small_model.state_dict())


def _gap_threshold(scores: np.ndarray, above: int) -> float:
    """A threshold in a clear gap of the score distribution, with about `above` scores over it."""
    s = np.sort(scores)[::-1][: above * 2]
    gaps = s[:-1] - s[1:]
    i = int(np.argmax(gaps[above // 2:])) + above // 2
    return float((s[i] + s[i + 1]) / 2)


def test_detect_batch_equals_single_images(small_detector):
    images = [np.random.randint(0, 256, (120, 200, 3), np.uint8), np.random.randint(0, 256, (300, 90, 3), np.uint8)]
    thresholds = []
    for image in images:  # thresholds in score gaps, so tiny batch-vs-single float noise cannot flip a box
        batch, _ = preprocess([image], 256, MEAN, STD)
        with torch.inference_mode():
            scores = small_detector.model(batch)[1].max(dim=2).values[0].numpy()
        thresholds.append(_gap_threshold(scores, 40))
    alone = [small_detector.detect([im], [t], [0.5])[0] for im, t in zip(images, thresholds)]
    together = small_detector.detect(images, thresholds, [0.5, 0.5])
    for a, b, image in zip(alone, together, images):
        assert len(a) > 3
        np.testing.assert_array_equal(a.class_ids, b.class_ids)
        np.testing.assert_allclose(a.scores, b.scores, rtol=1e-5)
        np.testing.assert_allclose(a.boxes, b.boxes, rtol=1e-4, atol=1e-3)
        assert a.boxes[:, 0].min() >= 0 and a.boxes[:, 1].min() >= 0
        h, w = image.shape[:2]  # clipped at the padded input, so inside the image scaled back (+1 px)
        assert a.boxes[:, 2].max() <= 256 / (256 / max(h, w)) and a.boxes[:, 3].max() <= 256 / (256 / max(h, w))


def test_detect_matches_zylo117_pipeline(small_detector):
    """detect() == cv2 preprocessing + forward + BBoxTransform/ClipBoxes/batched_nms/invert_affine.

    The forward is the detector's own (BN-folded) model, so this isolates pre/postprocessing;
    folding itself is checked against the plain model in the weights test below.
    """
    cv2 = pytest.importorskip("cv2")
    from torchvision.ops import batched_nms

    image = np.random.randint(0, 256, (150, 230, 3), np.uint8)
    new_h, new_w = resized_size(150, 230, 256)
    framed = np.zeros((256, 256, 3), np.float32)
    framed[:new_h, :new_w] = cv2.resize((image / 255 - np.array(MEAN)) / np.array(STD), (new_w, new_h))
    x = torch.from_numpy(framed).permute(2, 0, 1)[None].contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        regression, classification = small_detector.model(x)
    anchors = torch.from_numpy(ref_anchors((256, 256), range(3, 8), 4.0))[None]
    ya, xa = (anchors[..., 0] + anchors[..., 2]) / 2, (anchors[..., 1] + anchors[..., 3]) / 2
    ha, wa = anchors[..., 2] - anchors[..., 0], anchors[..., 3] - anchors[..., 1]
    w, h = regression[..., 3].exp() * wa, regression[..., 2].exp() * ha
    yc, xc = regression[..., 0] * ha + ya, regression[..., 1] * wa + xa
    boxes = torch.stack([xc - w / 2.0, yc - h / 2.0, xc + w / 2.0, yc + h / 2.0], dim=2)
    boxes[:, :, 0].clamp_(min=0)
    boxes[:, :, 1].clamp_(min=0)
    boxes[:, :, 2].clamp_(max=255)
    boxes[:, :, 3].clamp_(max=255)
    scores = classification.max(dim=2).values[0]
    threshold = _gap_threshold(scores.numpy(), 30)
    keep = scores > threshold
    cls_scores, classes = classification[0, keep].permute(1, 0).max(dim=0)
    order = batched_nms(boxes[0, keep], scores[keep], classes, 0.3)
    rois = boxes[0, keep][order].numpy()
    rois[:, [0, 2]] = rois[:, [0, 2]] / (new_w / 230)
    rois[:, [1, 3]] = rois[:, [1, 3]] / (new_h / 150)

    (found,) = small_detector.detect([image], [threshold], [0.3])
    assert len(found) == len(rois) > 3
    np.testing.assert_array_equal(found.class_ids, classes[order].numpy())
    np.testing.assert_allclose(found.scores, cls_scores[order].numpy(), rtol=1e-5)
    np.testing.assert_allclose(found.boxes, rois, rtol=1e-4, atol=1e-3)


def test_detect_is_thread_safe(small_detector):
    from concurrent.futures import ThreadPoolExecutor

    images = [np.random.randint(0, 256, (100 + 20 * i, 160, 3), np.uint8) for i in range(4)]
    expected = [small_detector.detect([im], [0.12], [0.5])[0] for im in images]
    assert all(len(e) > 0 for e in expected)
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda im: small_detector.detect([im], [0.12], [0.5])[0], images * 2))
    for e, g in zip(expected * 2, got):
        np.testing.assert_array_equal(e.class_ids, g.class_ids)
        np.testing.assert_array_equal(e.boxes, g.boxes)


def test_detect_validates_inputs_and_handles_empty(small_detector):
    assert small_detector.detect([], [], []) == []
    image = np.zeros((20, 30, 3), np.uint8)
    with pytest.raises(ValueError, match="pred_thresholds has 2"):
        small_detector.detect([image], [0.5, 0.5], [0.5])
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        small_detector.detect([image], [float("nan")], [0.5])
    with pytest.raises(ValueError, match="HxWx3"):
        small_detector.detect([np.zeros((20, 30, 4), np.uint8)], [0.5], [0.5])
    (none,) = small_detector.detect([image], [1.0], [0.5])
    assert isinstance(none, Detections) and len(none) == 0 and none.boxes.shape == (0, 4)


def test_detector_loads_weights_falls_back_to_fp32_on_cpu_and_warms_up(d0_weights, caplog):
    cfg = dataclasses.replace(efficientdet_config(0), input_size=128)
    with caplog.at_level("INFO", logger="smvision"):
        detector = EfficientDetector(cfg, d0_weights, device="cpu", float16=True)
    assert detector.dtype == torch.float32 and "float32" in caplog.text
    model = detector.model
    assert not model.training and model.batchnorm_fused
    assert model.backbone_net.model._conv_stem.conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    reference = EfficientDet(cfg)
    load_zylo117_state_dict(reference, d0_weights)
    x = torch.randn(1, 3, 128, 128)
    with torch.inference_mode():
        for got, expected in zip(model(x.contiguous(memory_format=torch.channels_last)), reference.eval()(x)):
            torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    assert model.fuse_batchnorm() is model  # a second fold is a no-op
    with pytest.raises(ValueError, match="folded"):
        load_zylo117_state_dict(model, d0_weights)
    detector.warm_up()


def test_max_detections_keeps_the_best_and_changes_nothing_below_the_cap(small_detector):
    image = np.random.RandomState(3).randint(0, 256, (150, 230, 3), np.uint8)
    (everything,) = small_detector.detect([image], [0.01], [0.5])
    assert len(everything) > 10
    assert np.all(np.diff(everything.scores) <= 0)  # best first
    (capped,) = small_detector.detect([image], [0.01], [0.5], [5])
    (roomy,) = small_detector.detect([image], [0.01], [0.5], [len(everything)])
    for name in ("boxes", "scores", "class_ids"):
        np.testing.assert_array_equal(getattr(capped, name), getattr(everything, name)[:5])
        np.testing.assert_array_equal(getattr(roomy, name), getattr(everything, name))
