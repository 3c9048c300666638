"""EfficientDet on ONNX Runtime: the export, numpy pre/postprocessing and NMS against the
torch path and torchvision, runtime selection, and a serving path that never imports torch."""

from __future__ import annotations

import dataclasses
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from devtools.weights import random_state_dict, trained_like_efficientdet
from smvision.archive.efficientdet_onnx import export_efficientdet_onnx
from smvision.manifest import ArchiveError, Manifest
from smvision.models.efficientdet import (
    EfficientDet,
    EfficientDetector,
    OnnxEfficientDetector,
    efficientdet_config,
    generate_anchors,
    load_zylo117_state_dict,
)
from smvision.models.efficientdet.anchors import anchor_boxes
from smvision.models.efficientdet.nms import batched_nms, nms
from smvision.models.efficientdet.postprocess import postprocess
from smvision.models.efficientdet.postprocess_numpy import AnchorArrays, postprocess_numpy
from smvision.models.efficientdet.preprocess import preprocess
from smvision.models.efficientdet.resize import Resized, preprocess_numpy, resized_size
from smvision.kinds.efficientdet_runtime import RUNTIME_ENV, batch_size, choose_runtime
from smvision.settings import RuntimeSettings
from support import PYTHON, skimage_photo, spread_scores_d0
from test_efficientdet_model import MEAN, STD, _gap_threshold, _hand_case, zylo117_keys

PHOTOS = ("astronaut.png", "coffee.png", "rocket.jpg", "chelsea.png")


@pytest.fixture(scope="module")
def photos() -> list[np.ndarray]:
    return [np.asarray(Image.open(skimage_photo(name)).convert("RGB")) for name in PHOTOS]


@pytest.fixture(scope="module")
def small_model():
    """D0 at input 256 with spread scores (support.spread_scores_d0), and its ONNX export, made once."""
    model = spread_scores_d0()
    return model, export_efficientdet_onnx(model)


@pytest.fixture(scope="module")
def detectors(small_model):
    model, onnx_bytes = small_model
    return EfficientDetector(model.config, model.state_dict()), OnnxEfficientDetector(model.config, onnx_bytes)


# --------------------------------------------------------------------------------------
# NMS: the same decisions as torchvision.ops.batched_nms
# --------------------------------------------------------------------------------------

def _random_boxes(rng, n, classes, spread=300.0):
    xy = rng.uniform(0, spread, (n, 2)).astype(np.float32)
    wh = rng.uniform(2, 120, (n, 2)).astype(np.float32)
    scores = rng.permutation(n).astype(np.float32) / n + np.float32(0.5 / n)  # distinct: no ties to break
    return np.concatenate([xy, xy + wh], axis=1), scores, rng.integers(0, classes, n)


@pytest.mark.parametrize("n, classes, iou", [(300, 4, 0.5), (999, 7, 0.2), (1001, 7, 0.2), (2500, 3, 0.6), (1500, 1, 0.05)])
def test_batched_nms_decides_as_torchvision(n, classes, iou):
    """Both of torchvision's CPU strategies: the coordinate trick (<= 1000 boxes) and per-class NMS."""
    from torchvision.ops import batched_nms as reference

    boxes, scores, class_ids = _random_boxes(np.random.default_rng(n), n, classes)
    expected = reference(torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(class_ids), iou).numpy()
    got = batched_nms(boxes, scores, class_ids, iou)
    assert 10 < len(expected) < n
    np.testing.assert_array_equal(got, expected)


def test_nms_compares_iou_in_double_as_torchvision():
    """An IoU of float32(0.2) = 0.20000000298 is over a threshold of 0.2 taken in double: suppressed."""
    from torchvision.ops import nms as reference

    boxes = np.array([[0, 0, 10, 10], [0, 0, 2, 10], [20, 20, 30, 30]], np.float32)  # IoU(0, 1) = 20 / 100
    scores = np.array([0.9, 0.8, 0.7], np.float32)
    expected = reference(torch.from_numpy(boxes), torch.from_numpy(scores), 0.2).numpy()
    np.testing.assert_array_equal(expected, [0, 2])
    np.testing.assert_array_equal(nms(boxes, scores, 0.2), expected)
    np.testing.assert_array_equal(nms(boxes, scores, 0.21), [0, 1, 2])
    assert batched_nms(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64), 0.5).shape == (0,)


# --------------------------------------------------------------------------------------
# numpy preprocessing, anchors and postprocessing == the torch path's
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(300, 457, 3), (61, 40, 3), (512, 300, 3), (49, 49, 3), (256, 256, 3)])
def test_numpy_preprocess_equals_cv2_and_the_torch_path(shape):
    cv2 = pytest.importorskip("cv2")
    image = np.random.default_rng(sum(shape)).integers(0, 256, shape, dtype=np.uint8)
    batch, fits = preprocess_numpy([image, image[::-1]], 256, MEAN, STD)
    assert batch.shape == (2, 3, 256, 256) and batch.dtype == np.float32 and batch.flags.c_contiguous
    torch_batch, torch_fits = preprocess([image, image[::-1]], 256, MEAN, STD)
    np.testing.assert_allclose(batch, torch_batch.numpy(), atol=1e-6, rtol=0)
    assert fits == torch_fits
    new_h, new_w = resized_size(shape[0], shape[1], 256)
    normalised = (image / 255 - np.array(MEAN)) / np.array(STD)
    if (new_h, new_w) != shape[:2]:
        normalised = cv2.resize(normalised, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    canvas = np.zeros((256, 256, 3), np.float32)
    canvas[:new_h, :new_w] = normalised
    np.testing.assert_allclose(batch[0].transpose(1, 2, 0), canvas, atol=2e-6, rtol=0)


def test_numpy_anchors_are_the_torch_anchors():
    cfg = efficientdet_config(2)
    args = ((768, 768), cfg.pyramid_levels, cfg.anchor_scale, cfg.anchor_scales, cfg.anchor_ratios)
    np.testing.assert_array_equal(anchor_boxes(*args), generate_anchors(*args).numpy())


def test_numpy_postprocess_hand_built_case_equals_the_torch_path():
    geometry, regression, classification = _hand_case()
    anchors = AnchorArrays(*(t.numpy() for t in (geometry.yc, geometry.xc, geometry.h, geometry.w)))
    fit = Resized(old_w=32, old_h=64, new_w=16, new_h=16)
    (expected,) = postprocess(regression, classification, geometry, (16, 16), [0.4], [0.5], [fit])
    (got,) = postprocess_numpy(regression.numpy(), classification.numpy(), anchors, (16, 16), [0.4], [0.5], [fit])
    np.testing.assert_array_equal(got.class_ids, [0, 2])
    np.testing.assert_array_equal(got.boxes, expected.boxes)
    np.testing.assert_array_equal(got.scores, expected.scores)
    assert got.boxes.dtype == np.float32 and got.class_ids.dtype == np.int64
    (first,) = postprocess_numpy(regression.numpy(), classification.numpy(), anchors, (16, 16), [0.4], [0.5], [fit], [1])
    assert len(first) == 1 and first.scores[0] == np.float32(0.9)


def test_numpy_postprocess_equals_the_torch_path_on_network_outputs(detectors, photos):
    """Same raw outputs in, same detections out: thresholds low enough for hundreds of boxes per image."""
    torch_detector, onnx_detector = detectors
    batch, fits = preprocess_numpy(photos, 256, MEAN, STD)
    regression, classification = onnx_detector.forward(batch)
    scores = classification.max(axis=2)
    preds = [float(np.sort(s)[-400]) for s in scores]
    ious = [0.5, 0.3, 0.2, 0.7]
    expected = postprocess(torch.from_numpy(regression), torch.from_numpy(classification),
                           torch_detector.anchors((256, 256)), (256, 256), preds, ious, fits)
    got = postprocess_numpy(regression, classification, onnx_detector._anchors, (256, 256), preds, ious, fits)
    for e, g in zip(expected, got):
        assert len(g) > 20
        np.testing.assert_array_equal(g.class_ids, e.class_ids)
        np.testing.assert_array_equal(g.scores, e.scores)
        np.testing.assert_allclose(g.boxes, e.boxes, rtol=1e-6, atol=1e-4)


# --------------------------------------------------------------------------------------
# the export
# --------------------------------------------------------------------------------------

def test_onnx_outputs_equal_torch_on_real_photos_at_any_batch_size(detectors, small_model, photos):
    model, _ = small_model
    assert not model.batchnorm_fused  # the export folded a copy
    _, onnx_detector = detectors
    batch, _ = preprocess_numpy(photos[:3], 256, MEAN, STD)
    with torch.inference_mode():
        expected = [t.numpy() for t in model(torch.from_numpy(batch))]
    for rows in (slice(0, 1), slice(1, 3)):
        for got, e in zip(onnx_detector.forward(np.ascontiguousarray(batch[rows])), expected):
            np.testing.assert_allclose(got, e[rows], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("coef", [1, 2])
def test_d1_d2_exports_match_torch_without_drift(coef, photos):
    """D1/D2 (B1/B2 backbones, 4/5 BiFPN cells) at input 128: every TF-"SAME" padding is
    asymmetric where it is at 640/768 (stem 1 px, P6 -> P7 pooling 1 px, ...), at a
    fraction of the cost. zylo117-layout random weights with spread statistics; the
    export is of the BN-folded copy the torch path serves."""
    cfg = dataclasses.replace(efficientdet_config(coef, num_classes=6), input_size=128)
    model = EfficientDet(cfg)
    load_zylo117_state_dict(model, random_state_dict(zylo117_keys(coef, num_classes=6), seed=coef))
    model.eval()
    detector = OnnxEfficientDetector(cfg, export_efficientdet_onnx(model))
    batch, _ = preprocess_numpy(photos[:2], 128, MEAN, STD)
    with torch.inference_mode():
        expected = [t.numpy() for t in model(torch.from_numpy(batch))]
    for got, e in zip(detector.forward(batch), expected):
        assert e.std() > 0.01
        np.testing.assert_allclose(got, e, rtol=1e-4, atol=2e-5)


@pytest.mark.parametrize("coef", [0, 1])
def test_onnx_scores_equal_torch_on_trained_like_weights(coef, photos):
    """The default CPU runtime (ONNX Runtime, fully optimised session as served) gives the
    torch path's class scores within 1e-4 at the real input size, on weights that behave
    like trained ones (trained_like_efficientdet). ORT's GlobalAveragePool
    sums a whole feature map in one float32 accumulator (worse in its NCHWc kernel): the
    squeeze-and-excitation means drifted scores by 1e-3 before the export split them."""
    model = trained_like_efficientdet(coef, photos)
    cfg = model.config
    torch_detector = EfficientDetector(cfg, model.state_dict())
    onnx_detector = OnnxEfficientDetector(cfg, export_efficientdet_onnx(model))
    batch, _ = preprocess_numpy(photos, cfg.input_size, cfg.mean, cfg.std)
    with torch.inference_mode():
        expected_reg, expected_cls = (t.numpy() for t in torch_detector.model(torch.from_numpy(batch)))
    for rows in (slice(0, 1), slice(1, 4)):  # batch sizes 1 and 3
        got_reg, got_cls = onnx_detector.forward(np.ascontiguousarray(batch[rows]))
        assert expected_cls[rows].max() > 0.1  # scores spread: some anchors stand out (the prior is 0.01)
        assert np.abs(got_cls - expected_cls[rows]).max() < 1e-4
        assert np.abs(got_reg - expected_reg[rows]).max() < 1e-3


def test_detect_equals_the_torch_detector(detectors):
    """End to end on canvas-filling images (no padding, whose constant features tie scores
    exactly), thresholds in clear score gaps."""
    torch_detector, onnx_detector = detectors
    rng = np.random.default_rng(5)
    images = [rng.integers(0, 256, (256, 256, 3), dtype=np.uint8) for _ in range(2)]
    batch, _ = preprocess_numpy(images, 256, MEAN, STD)
    thresholds = [_gap_threshold(s.max(axis=1), 40) for s in onnx_detector.forward(batch)[1]]
    expected = torch_detector.detect(images, thresholds, [0.5, 0.5])
    got = onnx_detector.detect(images, thresholds, [0.5, 0.5])
    for e, g in zip(expected, got):
        assert len(e) > 3
        np.testing.assert_array_equal(g.class_ids, e.class_ids)
        np.testing.assert_allclose(g.scores, e.scores, rtol=1e-5)
        np.testing.assert_allclose(g.boxes, e.boxes, rtol=1e-4, atol=1e-3)
    assert onnx_detector.detect([], [], []) == []
    with pytest.raises(ValueError, match="iou_thresholds has 1"):
        onnx_detector.detect(images, thresholds, [0.5])


def test_onnx_model_for_another_input_size_is_refused(small_model):
    _, onnx_bytes = small_model
    cfg = efficientdet_config(0, num_classes=5)  # 512, the export is 256
    with pytest.raises(ValueError, match="3x512x512"):
        OnnxEfficientDetector(cfg, onnx_bytes)


# --------------------------------------------------------------------------------------
# runtime selection, batch size
# --------------------------------------------------------------------------------------

def _manifest(weights: str | None, onnx: str | None) -> Manifest:
    artifacts = {role: name for role, name in (("weights", weights), ("onnx", onnx)) if name}
    return Manifest(kind="efficientdet", config={"compound_coef": 0}, artifacts=artifacts, random_weights=True)


def test_runtime_choice_and_clear_errors(tmp_path, monkeypatch):
    monkeypatch.setattr("smvision.kinds.efficientdet_runtime.gpu_present", lambda: False)
    both, torch_only, onnx_only = _manifest("model.pth", "model.onnx"), _manifest("model.pth", None), _manifest(None, "model.onnx")
    assert choose_runtime(both, tmp_path, RuntimeSettings.from_env({})) == "onnx"  # auto on CPU
    assert choose_runtime(both, tmp_path, RuntimeSettings.from_env({RUNTIME_ENV: "torch"})) == "torch"
    assert choose_runtime(torch_only, tmp_path, RuntimeSettings.from_env({RUNTIME_ENV: "auto"})) == "torch"
    assert choose_runtime(onnx_only, tmp_path, RuntimeSettings.from_env({})) == "onnx"
    with pytest.raises(ArchiveError, match="SMVISION_RUNTIME=onnx but the archive .* has no ONNX export.*--backend onnx"):
        choose_runtime(torch_only, tmp_path, RuntimeSettings.from_env({RUNTIME_ENV: "onnx"}))
    with pytest.raises(ArchiveError, match="SMVISION_RUNTIME=torch but the archive .* has no torch weights"):
        choose_runtime(onnx_only, tmp_path, RuntimeSettings.from_env({RUNTIME_ENV: "torch"}))
    # a bad value is refused when the settings are read, once, before any archive is looked at
    with pytest.raises(ValueError, match="SMVISION_RUNTIME='tensorrt': use one of auto, onnx, torch"):
        choose_runtime(both, tmp_path, RuntimeSettings.from_env({RUNTIME_ENV: "tensorrt"}))
    monkeypatch.setattr("smvision.kinds.efficientdet_runtime.gpu_present", lambda: True)
    assert choose_runtime(both, tmp_path, RuntimeSettings.from_env({})) == "torch"  # auto on a GPU
    assert choose_runtime(onnx_only, tmp_path, RuntimeSettings.from_env({})) == "onnx"


def test_batch_size_follows_the_device_unless_set(detectors):
    torch_detector, onnx_detector = detectors
    assert batch_size(onnx_detector, RuntimeSettings.from_env({})) == 1 and batch_size(torch_detector, RuntimeSettings.from_env({})) == 1  # CPU
    assert batch_size(onnx_detector, RuntimeSettings.from_env({"SMVISION_BATCH_SIZE": "4"})) == 4
    with pytest.raises(ValueError, match="SMVISION_BATCH_SIZE"):
        batch_size(onnx_detector, RuntimeSettings.from_env({"SMVISION_BATCH_SIZE": "0"}))


# --------------------------------------------------------------------------------------
# archives and serving
# --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def onnx_only_model_dir(tmp_path_factory) -> Path:
    from smvision.archive.build import extract_archive
    from smvision.archive.efficientdet import build_efficientdet_archive

    root = tmp_path_factory.mktemp("onnx-only")
    archive = build_efficientdet_archive(root / "model.tar.gz", compound_coef=0, backend="onnx")
    return extract_archive(archive, root / "model")


def test_onnx_only_archive_serves_without_importing_torch(onnx_only_model_dir, photos):
    manifest = json.loads((onnx_only_model_dir / "manifest.json").read_text())
    assert manifest["artifacts"] == {"onnx": "model.onnx"}
    assert "model.onnx" in manifest["files"] and not (onnx_only_model_dir / "model.pth").exists()
    script = (
        "import sys, numpy as np\n"
        f"sys.path.insert(0, {str(onnx_only_model_dir / 'code')!r})\n"
        "import inference\n"
        f"model = inference.model_fn({str(onnx_only_model_dir)!r})\n"
        f"body = inference.input_fn(open({str(skimage_photo('rocket.jpg'))!r}, 'rb').read(), 'image/jpeg')\n"
        "results = inference.predict_fn(body, model).results.items\n"
        "assert results[0]['image_size'] == [640, 427], results\n"
        "print(model.detector.runtime, model.batch_size, 'torch' in sys.modules, 'torchvision' in sys.modules)\n"
    )
    done = subprocess.run([PYTHON, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["onnx", "1", "False", "False"]


def test_runtime_the_archive_cannot_serve_fails_at_load(onnx_only_model_dir, monkeypatch):
    from smvision.kinds import load_model

    monkeypatch.setenv(RUNTIME_ENV, "torch")
    with pytest.raises(ArchiveError, match="no torch weights"):
        load_model(onnx_only_model_dir)


def test_torch_and_onnx_runtimes_serve_the_same_archive_alike(d0_model_dir, monkeypatch):
    """The session's archive (backend both) under each runtime: same results for a raw photo."""
    from smvision.kinds import load_model
    from smvision.records import parse_request

    request = parse_request(skimage_photo("astronaut.png").read_bytes(), "image/png")
    results = {}
    for runtime in ("onnx", "torch"):
        monkeypatch.setenv(RUNTIME_ENV, runtime)
        model = load_model(d0_model_dir)
        assert model.detector.runtime == runtime and model.batch_size == 1
        model.defaults = dataclasses.replace(model.defaults, pred=0.0101)  # random D0 scores sit near 0.01
        results[runtime] = model.predict(request)[0]
    onnx_found, torch_found = results["onnx"]["detections"], results["torch"]["detections"]
    assert len(torch_found) > 20
    # Random weights score many anchors within float rounding of each other, so a few ties
    # may break differently; on distinct scores the two agree exactly (tests above).
    assert abs(len(onnx_found) - len(torch_found)) <= 0.02 * len(torch_found)
    assert onnx_found[0]["class_id"] == torch_found[0]["class_id"]
    assert np.allclose(onnx_found[0]["bbox"], torch_found[0]["bbox"], atol=0.05)
