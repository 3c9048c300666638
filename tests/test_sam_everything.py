""""mode": "everything": SamAutomaticMaskGenerator's masks from the sam and sam-decode kinds,
on batches of points through the ONNX decoder; clear 4xx / 504 for work that cannot fit."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest

from conftest import BUCKET
from smvision.container.handler import Handler
from smvision.errors import InferenceError
from smvision.images import decode_image
from smvision.inflight import request_scope

#: random weights: masks only get through with the filters off (their predicted IoU and stability are low)
#: (and their masks all cover the whole image: box NMS would keep one)
LOOSE = {"points_per_side": 4, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0, "box_nms_thresh": 1.0,
         "crop_nms_thresh": 1.0}


def load(model_dir, monkeypatch=None, **env) -> Handler:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    handler = Handler(str(model_dir))
    handler.load()
    return handler


@pytest.fixture(scope="module")
def sam_handler(sam_model_dir, photos):
    return load(sam_model_dir("sam"))


@pytest.fixture(scope="module")
def decode_handler(sam_model_dir):
    return load(sam_model_dir("sam-decode"))


def call(handler, body, timeout=None):
    with request_scope(timeout) as inflight:
        data, _ = handler.invoke(json.dumps(body).encode(), "application/json", None)
    return json.loads(data), inflight.stages


def failure(handler, body, timeout=None) -> InferenceError:
    with pytest.raises(InferenceError) as caught:
        call(handler, body, timeout)
    return caught.value


def generator_masks(sam, image, **knobs):
    from segment_anything import SamAutomaticMaskGenerator

    return SamAutomaticMaskGenerator(sam, output_mode="coco_rle", **knobs).generate(image)


def assert_same_masks(ours: list[dict], theirs: list[dict]) -> None:
    """Same count; after matching each of ours to the best of theirs, IoU >= 0.99 and the
    same scores, box and crop."""
    from pycocotools import mask as mask_utils

    assert len(ours) == len(theirs) and len(ours) > 3
    ours_rle = [m["segmentation"] for m in ours]
    theirs_rle = [t["segmentation"] for t in theirs]
    ious = mask_utils.iou(ours_rle, theirs_rle, [False] * len(theirs_rle))
    matched = ious.argmax(axis=1)
    assert sorted(matched.tolist()) == list(range(len(theirs)))  # one to one
    for index, (mine, best) in enumerate(zip(ours, matched)):
        theirs_one = theirs[best]
        assert ious[index, best] >= 0.99
        assert mine["predicted_iou"] == pytest.approx(theirs_one["predicted_iou"], abs=1e-3)
        assert mine["stability_score"] == pytest.approx(theirs_one["stability_score"], abs=1e-2)
        assert np.allclose(mine["bbox"], theirs_one["bbox"], atol=2)
        assert mine["area"] == pytest.approx(theirs_one["area"], rel=0.01, abs=2)
        assert mine["crop_box"] == theirs_one["crop_box"]
        assert np.allclose(mine["point_coords"], theirs_one["point_coords"], atol=1e-2)


class CountingEncoder:
    """Wraps the model's encoder to count the images (and crops) it encodes."""

    def __init__(self, encoder) -> None:
        self.encoder = encoder
        self.sizes = []

    def encode(self, images):
        self.sizes += [image.shape[:2] for image in images]
        return self.encoder.encode(images)


def test_sam_everything_matches_the_generator_with_crops_and_small_regions(sam_handler, tiny_sam, photos):
    knobs = {**LOOSE, "points_per_side": 2, "crop_n_layers": 1, "min_mask_region_area": 200}
    encoder = sam_handler.model.encoder = CountingEncoder(sam_handler.model.encoder)
    try:
        answer, stages = call(sam_handler, {"bucket": BUCKET, "key": "rocket.jpg", "mode": "everything", **knobs})
    finally:
        sam_handler.model.encoder = encoder.encoder
    assert answer["mode"] == "everything" and answer["mask_format"] == "rle" and answer["original_size"] == [427, 640]
    assert {"encode", "mask_decoder", "masks", "nms", "small_regions"} <= set(stages)
    assert len(encoder.sizes) == 5 and encoder.sizes[0] == (427, 640)  # the image, then its 4 crops
    image = decode_image(photos["rocket.jpg"], "rocket")
    assert_same_masks(answer["masks"], generator_masks(tiny_sam, image, **knobs))


def test_sam_decode_everything_from_an_embedding_matches_the_generator(sam_handler, decode_handler, tiny_sam, photos):
    image = decode_image(photos["coffee.png"], "coffee")
    (embedding,) = sam_handler.model.encoder.encode([image])
    body = {"image_embedding": _npy_base64(embedding.array), "original_size": list(image.shape[:2]),
            "mode": "everything", "points_per_batch": 5, **LOOSE, "pred_iou_thresh": 0.02}
    answer, stages = call(decode_handler, body)
    assert {"mask_decoder", "masks", "nms"} <= set(stages) and "encode" not in stages
    theirs = generator_masks(tiny_sam, image, **{**LOOSE, "pred_iou_thresh": 0.02})
    assert_same_masks(answer["masks"], theirs)
    # the same request to the one-call kind answers the same masks, in order
    again, _ = call(sam_handler, {"bucket": BUCKET, "key": "coffee.png", "mode": "everything",
                                  "points_per_batch": 7, **LOOSE, "pred_iou_thresh": 0.02})
    assert [m["segmentation"] for m in again["masks"]] == [m["segmentation"] for m in answer["masks"]]


def test_mask_formats_other_than_rle(sam_handler):
    answer, _ = call(sam_handler, {"bucket": BUCKET, "key": "rocket.jpg", "mode": "everything", **LOOSE,
                                   "points_per_side": 1, "mask_format": "png"})
    from PIL import Image
    import io

    first = answer["masks"][0]
    png = np.array(Image.open(io.BytesIO(base64.b64decode(first["segmentation"]))))
    assert png.shape == (427, 640) and int(png.astype(bool).sum()) == first["area"]


def test_bad_knobs_are_400s_naming_the_knob(sam_handler, decode_handler):
    image = {"bucket": BUCKET, "key": "rocket.jpg", "mode": "everything"}
    for knob, value in (("points_per_side", 0), ("points_per_side", 2.5), ("pred_iou_thresh", 1.5),
                        ("box_nms_thresh", "x"), ("crop_n_layers", 9), ("min_mask_region_area", -1)):
        error = failure(sam_handler, {**image, knob: value})
        assert error.status == 400 and knob in error.message
    error = failure(sam_handler, {**image, "points": [[1, 1]], "labels": [1]})
    assert error.status == 400 and "points" in error.message
    assert failure(sam_handler, {**image, "mode": "all"}).status == 400
    assert failure(sam_handler, {"bucket": BUCKET, "key": "rocket.jpg", "points_per_side": 4, "box": [1, 1, 9, 9]}).status == 400
    embedding = _npy_base64(np.zeros((1, 256, 64, 64), np.float32))
    error = failure(decode_handler, {"image_embedding": embedding, "original_size": [427, 640], "mode": "everything",
                                     "crop_n_layers": 1})
    assert error.status == 400 and "crop_n_layers" in error.message and "sam kind" in error.message
    # an everything answer still comes after all of those
    assert call(decode_handler, {"image_embedding": embedding, "original_size": [427, 640], "mode": "everything",
                                 **LOOSE, "points_per_side": 1})[0]["mode"] == "everything"


def test_work_over_the_limits_is_a_413_or_504_naming_the_knobs(sam_model_dir, monkeypatch, photos):
    handler = load(sam_model_dir("sam"), monkeypatch, SAM_EVERYTHING_MAX_PROMPTS="100", SMVISION_MAX_IMAGE_PIXELS="250000")
    image = {"bucket": BUCKET, "key": "coffee.png", "mode": "everything"}  # 600 x 400
    error = failure(handler, {**image, "points_per_side": 11})  # 121 prompts
    assert error.status == 413 and "points_per_side" in error.message and "SAM_EVERYTHING_MAX_PROMPTS" in error.message
    error = failure(handler, {**image, "points_per_side": 6, "crop_n_layers": 1})  # 36 x 5 crops
    assert error.status == 413 and "crop_n_layers" in error.message
    big = failure(handler, {"bucket": BUCKET, "key": "rocket.jpg", "mode": "everything", **LOOSE})
    assert big.status == 413 and "pixels" in big.message  # 640 x 427 > 250,000
    # the request timeout: refused up front when the estimate cannot fit, else stopped between batches
    rate = handler.model.everything.rate
    rate.per_prompt, rate.per_mask_pixel = 1.0, 0.0  # as measured on a slow machine: 100 prompts cannot fit in 20 s
    error = failure(handler, {**image, **LOOSE, "points_per_side": 10}, timeout=20)
    assert error.status == 504 and "points_per_side" in error.message and "about 100 s" in error.message
    rate.per_prompt = rate.per_encode = 0.0  # an estimate that fits: the check between batches stops it
    error = failure(handler, {**image, **LOOSE, "points_per_side": 10, "points_per_batch": 1}, timeout=0.3)
    assert error.status == 504 and "points_per_side" in error.message
    assert call(handler, {**image, **LOOSE, "points_per_side": 1})[0]["masks"]  # and the worker goes on serving


def _npy_base64(array: np.ndarray) -> str:
    import io

    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


class BlobDecoder:
    """A stand-in for the decoder with masks that trained weights would give: three discs
    (radius 3, 8, 20 low-res pixels) around each point, scores that vary by point."""

    def __init__(self) -> None:
        from segment_anything.utils.transforms import ResizeLongestSide

        self.transform = ResizeLongestSide(1024)

    @staticmethod
    def low_res(coords: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(B, 3) scores and (B, 3, 256, 256) logits for points in the 1024 frame."""
        yy, xx = np.mgrid[0:256, 0:256] + 0.5
        centre = coords / 4
        distance = np.hypot(xx[None] - centre[:, 0, None, None], yy[None] - centre[:, 1, None, None])
        logits = np.stack([radius - distance for radius in (3.0, 8.0, 20.0)], axis=1).astype(np.float32)
        scores = 0.5 + 0.45 * np.sin(np.stack([centre[:, 0] * 0.37 + centre[:, 1] * 0.11 + k for k in range(3)], 1)) ** 2
        return scores.astype(np.float32), logits

    def decode(self, embedding, points, image_size):
        return self.low_res(self.transform.apply_coords(np.asarray(points, dtype=np.float64), image_size))


def test_generate_matches_the_generator_on_masks_with_shapes_crops_nms_and_small_regions(tiny_sam):
    """Random weights give whole-image masks that crop-edge filters and NMS throw away; on
    disc-shaped masks every step of the generator has work to do, crops included."""
    import torch
    from segment_anything import SamAutomaticMaskGenerator

    from smvision.models.sam.decoder import input_size
    from smvision.kinds.sam_everything import answer, parse_options
    from smvision.models.sam.everything import generate

    knobs = {"points_per_side": 6, "crop_n_layers": 1, "pred_iou_thresh": 0.6, "stability_score_thresh": 0.8,
             "min_mask_region_area": 400, "box_nms_thresh": 0.5}
    size = (300, 450)
    result = generate(size, parse_options(knobs, "test"), lambda box: (None, input_size((box[3] - box[1], box[2] - box[0]))),
                      BlobDecoder())
    ours = answer(result, "rle", size, 10**9)["masks"]

    generator = SamAutomaticMaskGenerator(tiny_sam, output_mode="coco_rle", **knobs)
    predictor = generator.predictor

    def set_image(image, image_format="RGB"):
        predictor.original_size = image.shape[:2]
        predictor.input_size = predictor.transform.get_preprocess_shape(*image.shape[:2], 1024)
        predictor.is_image_set = True

    def predict_torch(point_coords, point_labels, multimask_output=True, return_logits=False):
        scores, low = BlobDecoder.low_res(point_coords[:, 0].numpy())
        low = torch.from_numpy(low)
        return predictor.model.postprocess_masks(low, predictor.input_size, predictor.original_size), torch.from_numpy(scores), low

    predictor.set_image, predictor.predict_torch = set_image, predict_torch
    theirs = generator.generate(np.zeros((*size, 3), np.uint8))
    assert_same_masks(ours, theirs)
    assert len({tuple(m["crop_box"]) for m in ours}) > 1  # masks from crops survived too


#: the issue's sizes: original_size 7000x7000 (49 MP, under SMVISION_MAX_IMAGE_PIXELS), where
#: each mask takes a second or more to upsample, score and encode on a busy 2-core machine
HUGE = [7000, 7000]


def _huge_decode_body(**knobs) -> dict:
    embedding = np.random.default_rng(0).normal(size=(1, 256, 64, 64)).astype(np.float32)
    return {"image_embedding": _npy_base64(embedding), "original_size": HUGE, "mode": "everything",
            **LOOSE, "points_per_side": 2, **knobs}


def test_over_http_everything_past_its_deadline_answers_504_in_time_and_frees_the_worker(sam_model_dir, tmp_path):
    """The issue: sam-decode at 7000x7000 answered 504 at the timeout but ran on, so /ping
    went 503 and the next good request timed out too."""
    import time

    import requests

    from smvision.deploy.server_process import smvision_serve as Server

    timeout = 4
    server = Server(sam_model_dir("sam-decode"), log_path=tmp_path / "serve.log",
                    env={"SAGEMAKER_MODEL_SERVER_TIMEOUT": str(timeout), "SAGEMAKER_MODEL_SERVER_WORKERS": "1",
                         "SMVISION_STUCK_AFTER_S": "2"})
    small = {"image_embedding": _npy_base64(np.zeros((1, 256, 64, 64), np.float32)), "original_size": [120, 160],
             "points": [[80, 60]], "labels": [1]}
    try:
        server.wait_ready()
        url = server.url + "/invocations"
        started = time.monotonic()
        late = requests.post(url, json=_huge_decode_body(), timeout=120)
        answered = time.monotonic()
        assert late.status_code == 504, late.text  # the worker's (naming the knobs) or the server's own
        assert answered - started < timeout + 2
        # the worker is free again soon after: /ping healthy, a small request answered
        freed = None
        while freed is None and time.monotonic() - answered < 30:
            ping = requests.get(server.url + "/ping", timeout=10)
            reply = requests.post(url, json=small, timeout=30)
            if ping.status_code == 200 and reply.status_code == 200:
                freed = time.monotonic()
        assert freed is not None and freed - answered < 4, f"worker busy {time.monotonic() - answered:.1f} s after its 504"
    finally:
        server.stop()


def test_the_deadline_is_checked_inside_upsampling_and_encoding_not_only_between_batches(sam_model_dir, monkeypatch):
    """With an estimate that lets the work through (a rate of 0), the 504 still comes within
    one step of one mask of the deadline: sam-decode at 49 MP, and the sam kind with crops
    on a 35 MP photo (image and crops encoded, masks upsampled, NMS)."""
    import io
    import time

    from PIL import Image

    from devtools.local_s3 import skimage_photo

    for kind, body, timeout in (
        ("sam-decode", _huge_decode_body(), 2.0),
        ("sam", None, 6.0),
    ):
        handler = load(sam_model_dir(kind), monkeypatch, SMVISION_MAX_IMAGE_PIXELS="50000000")
        if body is None:
            photo = Image.open(skimage_photo("coffee.png")).convert("RGB").resize((7200, 4800), Image.BILINEAR)
            buffer = io.BytesIO()
            photo.save(buffer, format="JPEG", quality=80)
            body = {"image": base64.b64encode(buffer.getvalue()).decode(), "mode": "everything", **LOOSE,
                    "points_per_side": 2, "crop_n_layers": 1}
        rate = handler.model.everything.rate
        for name in vars(rate):
            setattr(rate, name, 0.0)  # the estimate lets anything through
        started = time.monotonic()
        error = failure(handler, body, timeout=timeout)
        late = time.monotonic() - started - timeout
        assert error.status == 504 and "points_per_side" in error.message, error.message
        assert late < 2.0, f"{kind}: the work stopped {late:.1f} s after its deadline"


def test_the_up_front_estimate_counts_the_pixels_to_upsample(decode_handler):
    """Upsampling, stability scores and RLE scale with the image's pixels: nine prompts on a
    49 MP image (27 masks of 49 MP) cannot fit in 3 s and are refused at once; the same
    prompts at 120x160 are answered."""
    import time

    rate = decode_handler.model.everything.rate
    started = time.monotonic()
    error = failure(decode_handler, _huge_decode_body(points_per_side=3, points_per_batch=1), timeout=3)
    assert error.status == 504 and "needs about" in error.message and "points_per_side" in error.message, error.message
    assert time.monotonic() - started < 1.0
    small = {**_huge_decode_body(points_per_side=3), "original_size": [120, 160]}
    assert call(decode_handler, small, timeout=10)[0]["masks"]
    assert rate.seconds  # still a rate, for the next request
