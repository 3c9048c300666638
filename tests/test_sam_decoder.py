"""SAM's decoder on ONNX Runtime equals SamPredictor.predict; prompts are checked; masks encode.

A CI-sized SAM built from segment_anything's own classes (fixed seed), real photos at two
aspect ratios (coffee 400x600 landscape, a 512x300 portrait crop of the astronaut).
"""

from __future__ import annotations

import base64
import io
import numpy as np
import pytest
import torch
from PIL import Image

from smvision.archive.sam_onnx import export_sam_decoder
from smvision.errors import InferenceError
from smvision.models.sam.decoder import SamDecoder
from smvision.models.sam.masks import encode_masks
from smvision.kinds.sam_prompts import MASK_FORMATS, parse_prompts
from smvision.runtimes.onnx import create_session
from support import skimage_photo

PHOTOS = {"coffee": ("coffee.png", None), "astronaut": ("astronaut.png", (slice(0, 512), slice(100, 400)))}


def ci_sam():
    """The CI-sized SAM (vit_tiny_test): real classes, 2.1M parameters, fixed seed."""
    from smvision.models.sam.build import build_sam, sam_config

    torch.manual_seed(0)
    return build_sam(sam_config("vit_tiny_test"))


@pytest.fixture(scope="module")
def sam():
    return ci_sam()


@pytest.fixture(scope="module")
def onnx_path(sam, tmp_path_factory):
    return export_sam_decoder(sam, tmp_path_factory.mktemp("sam") / "decoder.onnx")


@pytest.fixture(scope="module")
def decoder(onnx_path):
    return SamDecoder(onnx_path, threads=1)


@pytest.fixture(scope="module")
def predictors(sam):
    """name -> (SamPredictor with the photo set, embedding, original size)."""
    from segment_anything import SamPredictor

    out = {}
    for name, (file, crop) in PHOTOS.items():
        pixels = np.asarray(Image.open(skimage_photo(file)).convert("RGB"))
        pixels = np.ascontiguousarray(pixels[crop] if crop else pixels)
        predictor = SamPredictor(sam)
        predictor.set_image(pixels)
        out[name] = (predictor, predictor.get_image_embedding().numpy(), pixels.shape[:2])
    return out


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


def low_res_npy(array: np.ndarray) -> str:
    buffer = io.BytesIO()
    np.save(buffer, array.astype(np.float32))
    return base64.b64encode(buffer.getvalue()).decode()


def prompt_cases(height: int, width: int) -> dict[str, dict]:
    point, background = [width * 0.45, height * 0.55], [width * 0.1, height * 0.2]
    box = [width * 0.2, height * 0.25, width * 0.8, height * 0.9]
    return {
        "point": {"points": [point], "labels": [1]},
        "points-single": {"points": [point, background], "labels": [1, 0], "multimask_output": False},
        "box": {"box": box, "multimask_output": False},
        "box-multi": {"box": box},
        "both": {"points": [point], "labels": [0], "box": box},
        "edge-point": {"points": [[width, height]], "labels": [1], "multimask_output": False},
        "five-points-box": {
            "points": [[width * f, height * (1 - f)] for f in (0.2, 0.35, 0.5, 0.65, 0.8)],
            "labels": [1, 0, 1, 1, 0],
            "box": box,
            "multimask_output": False,
        },
    }


@pytest.mark.parametrize("photo", list(PHOTOS))
def test_masks_equal_sam_predictor(decoder, predictors, photo):
    predictor, embedding, size = predictors[photo]
    for case, params in prompt_cases(*size).items():
        prompts = parse_prompts(params, size, case)
        result = decoder.decode(embedding, size, prompts)
        masks, scores, low_res = predictor.predict(
            prompts.points, prompts.labels, prompts.box, None, prompts.multimask_output
        )
        assert result.masks.shape == masks.shape == (3 if prompts.multimask_output else 1, *size), case
        assert result.masks.dtype == bool
        assert 0 < masks.mean() < 1, f"{case}: a trivial mask proves nothing"
        for ours, theirs in zip(result.masks, masks):
            assert iou(ours, theirs) >= 0.99, case
        np.testing.assert_allclose(result.scores, scores, atol=1e-4, err_msg=case)
        np.testing.assert_allclose(result.low_res_logits, low_res, atol=1e-3, err_msg=case)


@pytest.mark.parametrize("photo", list(PHOTOS))
def test_mask_input_refines_like_sam_predictor(decoder, predictors, photo):
    predictor, embedding, size = predictors[photo]
    first = decoder.decode(embedding, size, parse_prompts(prompt_cases(*size)["point"], size, "round 1"))
    best = first.low_res_logits[int(np.argmax(first.scores))]
    params = {**prompt_cases(*size)["points-single"], "mask_input": low_res_npy(best[None])}
    prompts = parse_prompts(params, size, "round 2")
    result = decoder.decode(embedding, size, prompts)
    masks, scores, _ = predictor.predict(prompts.points, prompts.labels, None, best[None], False)
    without = decoder.decode(embedding, size, parse_prompts(prompt_cases(*size)["points-single"], size, "plain"))
    assert iou(result.masks[0], masks[0]) >= 0.99
    np.testing.assert_allclose(result.scores, scores, atol=1e-4)
    assert iou(result.masks[0], without.masks[0]) < 0.999, "mask_input was ignored"


def test_without_a_mask_the_graph_never_reads_mask_input(decoder, predictors):
    """has_mask_input 0 runs none of the mask downscaling: whatever mask_input holds (NaN
    here) cannot reach the answer, which stays SamPredictor's."""
    predictor, embedding, size = predictors["coffee"]
    prompts = parse_prompts(prompt_cases(*size)["point"], size, "point")
    feed = decoder.feed(embedding, size, prompts)
    feed["mask_input"] = np.full_like(feed["mask_input"], np.nan)
    scores, low_res = decoder.session.run(decoder.output_names, feed)
    _, expected, expected_low_res = predictor.predict(prompts.points, prompts.labels, None, None, True)
    np.testing.assert_allclose(scores[0, 1:], expected, atol=1e-4)
    np.testing.assert_allclose(low_res[0, 1:], expected_low_res, atol=1e-3)


@pytest.mark.parametrize("with_mask", [False, True])
def test_served_session_equals_float64_torch(sam, decoder, predictors, with_mask):
    """The decoder graph under the served session options (every ONNX Runtime optimisation,
    NCHWc layouts included) gives MaskDecoder.predict_masks's scores and low-res logits,
    computed in float64, to float32 rounding: no optimiser moves them (EfficientDet's
    squeeze-and-excitation means did; this graph has none)."""
    import copy

    from smvision.archive.sam_onnx import LowResSamOnnxModel

    predictor, embedding, size = predictors["astronaut"]
    prompts = parse_prompts(prompt_cases(*size)["five-points-box"], size, "prompt")
    feed = decoder.feed(embedding, size, prompts)
    if with_mask:
        feed["mask_input"] = np.random.default_rng(1).normal(0, 4, feed["mask_input"].shape).astype(np.float32)
        feed["has_mask_input"] = np.ones_like(feed["has_mask_input"])
    scores, low_res = decoder.session.run(decoder.output_names, feed)
    with torch.no_grad():
        sparse = LowResSamOnnxModel(sam)._embed_points(torch.from_numpy(feed["point_coords"]), torch.from_numpy(feed["point_labels"]))
        sam64 = copy.deepcopy(sam).double()
        if with_mask:
            dense = sam64.prompt_encoder.mask_downscaling(torch.from_numpy(feed["mask_input"]).double())
        else:
            dense = sam64.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(1, -1, 64, 64)
        expected_low_res, expected_scores = sam64.mask_decoder.predict_masks(
            torch.from_numpy(embedding).double(), sam.prompt_encoder.get_dense_pe().double(), sparse.double(), dense)
    scale = np.abs(expected_low_res.numpy()).max()
    assert np.abs(low_res - expected_low_res.numpy()).max() < 1e-5 * max(scale, 1.0)
    assert np.abs(scores - expected_scores.numpy()).max() < 1e-5


def test_export_with_upsampling_is_right_at_every_aspect_ratio(sam, predictors, tmp_path):
    """The upstream graph (masks at orig_im_size), traced at 1500x2250, at other sizes."""
    session = create_session(export_sam_decoder(sam, tmp_path / "up.onnx", upsample=True), threads=1)
    decoder = SamDecoder(tmp_path / "up.onnx", threads=1)
    for photo, (predictor, embedding, size) in predictors.items():
        prompts = parse_prompts(prompt_cases(*size)["point"], size, photo)
        (logits,) = session.run(["masks"], decoder.feed(embedding, size, prompts))
        masks, _, _ = predictor.predict(prompts.points, prompts.labels, None, None, True)
        assert logits.shape == (1, 4, *size)
        for ours, theirs in zip(logits[0, 1:] > 0, masks):
            assert iou(ours, theirs) >= 0.99, photo


def test_quantized_export_is_smaller_and_close(sam, onnx_path, predictors, tmp_path):
    quantized = export_sam_decoder(sam, tmp_path / "int8.onnx", quantize=True)
    assert quantized.stat().st_size < 0.7 * onnx_path.stat().st_size  # int8 weights; the 4 MB image_pe stays
    predictor, embedding, size = predictors["coffee"]
    prompts = parse_prompts(prompt_cases(*size)["box"], size, "box")
    result = SamDecoder(quantized, threads=1).decode(embedding, size, prompts)
    masks, _, _ = predictor.predict(None, None, prompts.box, None, False)
    assert iou(result.masks[0], masks[0]) >= 0.95


BAD = [
    ({}, "no prompt"),
    ({"points": [[10, 10]]}, "need 'labels'"),
    ({"labels": [1]}, "without 'points'"),
    ({"points": [[10, 10], [20, 20]], "labels": [1]}, "1 labels for 2 points"),
    ({"points": [[10, 10]], "labels": [2]}, "1 (foreground) or 0"),
    ({"points": [[10, 10]], "labels": [True]}, "1 (foreground) or 0"),
    ({"points": [[700, 10]], "labels": [1]}, "outside the image"),
    ({"points": [[10, -1]], "labels": [1]}, "outside the image"),
    ({"points": [[10, "a"]], "labels": [1]}, "must be numbers"),
    ({"points": [[10, float("nan")]], "labels": [1]}, "finite"),
    ({"points": [10, 10], "labels": [1]}, "[x, y] pairs"),
    ({"points": [], "labels": []}, "non-empty"),
    ({"box": [50, 10, 40, 20]}, "x2 >= x1"),
    ({"box": [10, 50, 40, 20]}, "y2 >= y1"),
    ({"box": [10, 10, 40]}, "[x1, y1, x2, y2]"),
    ({"box": [10, 10, 40, 500]}, "outside the image"),
    ({"box": [10, 10, 40, 50], "mask_format": "jpeg"}, "mask_format must be one of"),
    ({"box": [10, 10, 40, 50], "multimask_output": "yes"}, "multimask_output must be true or false"),
    ({"box": [10, 10, 40, 50], "return_logits": 1}, "return_logits must be true or false"),
    ({"box": [10, 10, 40, 50], "mask_input": "not base64!"}, "'mask_input' is not valid base64"),
    ({"box": [10, 10, 40, 50], "mask_input": low_res_npy(np.zeros((1, 64, 64)))}, "shape (1, 256, 256)"),
    ({"box": [10, 10, 40, 50], "mask_input": low_res_npy(np.full((256, 256), np.nan))}, "NaN"),
]


@pytest.mark.parametrize("params,message", BAD, ids=[m for _, m in BAD])
def test_bad_prompts_are_400s_that_say_what(params, message):
    with pytest.raises(InferenceError) as raised:
        parse_prompts(params, (400, 600), "record 0")
    assert raised.value.status == 400
    assert message in raised.value.message and "record 0" in raised.value.message


def test_prompt_defaults_and_mask_input_shapes():
    prompts = parse_prompts({"points": [[600, 400]], "labels": [1]}, (400, 600), "r")
    assert (prompts.multimask_output, prompts.mask_format, prompts.return_logits) == (True, "rle", False)
    assert prompts.box is None and prompts.mask_input is None
    for shape in ((256, 256), (1, 256, 256), (1, 1, 256, 256)):
        given = np.random.default_rng(0).normal(size=shape).astype(np.float16)
        parsed = parse_prompts({"box": [0, 0, 5, 5], "mask_input": low_res_npy(given)}, (400, 600), "r").mask_input
        assert parsed.shape == (1, 1, 256, 256) and parsed.dtype == np.float32
        np.testing.assert_array_equal(parsed.ravel(), given.astype(np.float32).ravel())


@pytest.fixture(scope="module")
def real_masks(decoder, predictors):
    _, embedding, size = predictors["coffee"]
    return np.asarray(decoder.decode(embedding, size, parse_prompts(prompt_cases(*size)["point"], size, "r")).masks)


def test_every_mask_format_round_trips(real_masks):
    import cv2
    from pycocotools import mask as mask_utils

    assert set(MASK_FORMATS) == {"rle", "png", "polygon", "geojson", "npy"}
    height, width = real_masks.shape[1:]
    for mask, encoded in zip(real_masks, encode_masks(real_masks, "rle")):
        assert encoded["size"] == [height, width] and isinstance(encoded["counts"], str)
        np.testing.assert_array_equal(mask_utils.decode(encoded).astype(bool), mask)
    for mask, encoded in zip(real_masks, encode_masks(real_masks, "png")):
        image = Image.open(io.BytesIO(base64.b64decode(encoded)))
        assert image.format == "PNG" and image.mode == "1"
        np.testing.assert_array_equal(np.asarray(image), mask)
    for mask, encoded in zip(real_masks, encode_masks(real_masks, "npy")):
        np.testing.assert_array_equal(np.load(io.BytesIO(base64.b64decode(encoded))), mask)
    for mask, rings in zip(real_masks, encode_masks(real_masks, "polygon")):
        assert rings and all(len(point) == 2 for ring in rings for point in ring)
        canvas = np.zeros(mask.shape, np.uint8)
        cv2.fillPoly(canvas, [np.array(ring, np.int32) for ring in rings], 1)
        np.testing.assert_array_equal(canvas.astype(bool), mask)
    from rasterio.features import rasterize

    for index, (mask, feature) in enumerate(zip(real_masks, encode_masks(real_masks, "geojson"))):
        geometry = feature["geometry"]
        assert feature["properties"] == {"mask_index": index}
        assert geometry["type"] == "MultiPolygon" and geometry["coordinates"]
        for polygon in geometry["coordinates"]:
            outer, *holes = polygon
            assert outer[0] == outer[-1] and len(outer) >= 4
            assert signed_area(outer) > 0 and all(signed_area(h) < 0 for h in holes)
        # exact pixel-edge outlines: burning them back gives the mask itself
        np.testing.assert_array_equal(rasterize([(geometry, 1)], out_shape=mask.shape, dtype=np.uint8).astype(bool), mask)


def signed_area(ring: list[list[int]]) -> float:
    x, y = np.array(ring, dtype=float).T
    return float((x[:-1] * y[1:] - x[1:] * y[:-1]).sum() / 2)


def test_rle_of_a_transposed_view_is_right(real_masks):
    """Masks stored column by column (what a fast decoder gives) encode the same."""
    from pycocotools import mask as mask_utils

    columns = np.ascontiguousarray(real_masks.transpose(0, 2, 1)).transpose(0, 2, 1)
    assert not columns.flags.c_contiguous
    assert encode_masks(columns, "rle") == encode_masks(real_masks, "rle")
    assert mask_utils.decode(encode_masks(columns, "rle")[0]).astype(bool).tolist() == real_masks[0].tolist()


@pytest.mark.parametrize("original_size", [(2000, 300), (300, 2000), (100, 37), (1, 50), (700, 1), (1024, 1024), (333, 1024)])
def test_mask_runs_equal_dense_upscaling(original_size):
    """Run lengths straight from low-res logits = Sam.postprocess_masks(...) > 0, any size."""
    import cv2
    from torch.nn import functional as F

    from pycocotools import mask as mask_utils

    from smvision.models.sam.decoder import dense_mask_runs, input_size, mask_runs, sparse_mask_runs

    rng = np.random.default_rng(sum(original_size))
    blobs = [cv2.GaussianBlur(rng.normal(size=(256, 256)).astype(np.float32), (0, 0), s) for s in (3, 8, 20)]
    low_res = np.ascontiguousarray(np.stack(blobs) * 30 - 0.05, dtype=np.float32)
    size = input_size(original_size)
    logits = F.interpolate(torch.from_numpy(low_res)[None], (1024, 1024), mode="bilinear", align_corners=False)
    logits = F.interpolate(logits[..., : size[0], : size[1]], original_size, mode="bilinear", align_corners=False)
    expected = (logits[0] > 0).numpy()
    assert 0 < expected.mean() < 1
    for runs in (mask_runs(low_res, size, original_size), dense_mask_runs(low_res, size, original_size),
                 sparse_mask_runs(low_res, size, original_size)):
        assert len(runs) == 3 and runs.size == original_size
        assert runs.dense.shape == expected.shape
        for rle, mask in zip(runs.rle(), runs.dense):
            assert rle["size"] == list(original_size)
            np.testing.assert_array_equal(mask_utils.decode(rle).astype(bool), mask)
        differ = (runs.dense != expected).sum(axis=(1, 2))
        assert (differ <= 2 + expected[0].size // 100_000).all(), differ  # float rounding at edges only


def test_salt_and_pepper_masks_take_the_dense_path(monkeypatch):
    """Random-weight decoders give masks with an edge at every other pixel: same answer,
    through dense_mask_runs."""
    from smvision.models.sam import decoder as decoder_module

    low_res = np.random.default_rng(0).normal(size=(3, 256, 256)).astype(np.float32)
    size, original_size = decoder_module.input_size((300, 450)), (300, 450)
    calls = []
    dense = decoder_module.dense_mask_runs
    monkeypatch.setattr(decoder_module, "dense_mask_runs", lambda *a: calls.append(a) or dense(*a))
    runs = decoder_module.mask_runs(low_res, size, original_size)
    assert calls, "expected the dense path"
    sparse = decoder_module.sparse_mask_runs(low_res, size, original_size)
    assert len(calls) == 1
    assert (sparse.dense != runs.dense).sum() <= 5


def test_each_mask_takes_the_cheaper_path_decided_from_its_low_res_logits(monkeypatch):
    """One point, three masks at 1500x2250: a smooth mask (a trained SAM's) goes the edge
    way (sparse_mask_runs), a ragged one (random weights: an edge at nearly every low-res
    sample) straight to the full-size way (dense_mask_runs) without paying for the other
    first, each mask on its own; both ways give the same masks."""
    import cv2

    from smvision.models.sam import decoder as decoder_module

    rng = np.random.default_rng(3)
    smooth = [cv2.GaussianBlur(rng.normal(size=(256, 256)).astype(np.float32), (0, 0), s) * 30 for s in (8, 20)]
    ragged = rng.normal(size=(256, 256)).astype(np.float32)
    low_res = np.ascontiguousarray(np.stack([smooth[0], ragged, smooth[1]]))
    original_size = (1500, 2250)
    size = decoder_module.input_size(original_size)
    paths: list[tuple[str, int]] = []

    def spy(name: str) -> None:
        plain = getattr(decoder_module, name)
        monkeypatch.setattr(decoder_module, name, lambda low, *a: paths.append((name, len(low))) or plain(low, *a))

    spy("dense_mask_runs")
    runs = decoder_module.mask_runs(low_res, size, original_size)
    assert paths == [("dense_mask_runs", 1)], f"only the ragged mask goes the dense way: {paths}"
    spy("sparse_mask_runs")
    paths.clear()
    assert decoder_module.mask_runs(low_res, size, original_size).rle() == runs.rle()
    assert sorted(paths) == [("dense_mask_runs", 1), ("sparse_mask_runs", 2)], paths
    monkeypatch.undo()
    assert decoder_module.takes_dense_path(low_res, size, original_size).tolist() == [False, True, False]

    sparse = decoder_module.sparse_mask_runs(low_res, size, original_size)
    dense = decoder_module.dense_mask_runs(low_res, size, original_size)
    assert runs.rle() == sparse.rle() == dense.rle()  # identical masks, whichever way each went
    assert len(runs.rle()[1]["counts"]) > 5 * len(runs.rle()[0]["counts"])  # the ragged one is ragged


def test_decoded_masks_keep_their_runs(decoder, predictors):
    """result.masks is array-like but held as runs: RLE is never redone, the dense array
    (made once) remembers them, a slice of it does not, and it is read-only."""
    _, embedding, size = predictors["astronaut"]
    result = decoder.decode(embedding, size, parse_prompts(prompt_cases(*size)["point"], size, "r"))
    assert result.masks.shape == (3, *size) and result.masks.dtype == bool and len(result.masks) == 3
    assert "dense" not in vars(result.masks), "nothing full-size before it is asked for"
    assert encode_masks(result.masks, "rle") == result.runs.rle()
    assert "dense" not in vars(result.masks)
    dense = result.masks.dense
    assert dense.runs is result.masks and encode_masks(dense, "rle") == result.runs.rle()
    assert dense[1:].runs is None and encode_masks(dense[1:], "rle") == result.runs.rle()[1:]
    np.testing.assert_array_equal(np.asarray(result.masks), dense)
    np.testing.assert_array_equal(result.masks[2], dense[2])
    with pytest.raises(ValueError):
        dense[0, 0, 0] = not dense[0, 0, 0]


def test_decoder_threads_sleep_rather_than_spin(onnx_path):
    """Idle onnxruntime threads that spin take the cores from other workers (and double
    wall time under load, benchmarks/sam_decode.py --spinning both): SamDecoder turns it off."""
    spin = "session.intra_op.allow_spinning"
    assert SamDecoder(onnx_path, threads=2).session.get_session_options().get_session_config_entry(spin) == "0"
    spinning = SamDecoder(onnx_path, threads=2, spinning=True).session.get_session_options()
    with pytest.raises(RuntimeError, match="does not have configuration"):  # onnxruntime's default: spin
        spinning.get_session_config_entry(spin)
