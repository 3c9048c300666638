"""SAM "everything" masks on the CI-sized model: seconds per image and masks per second.

- everything: the sam-decode kind in-process (Handler.invoke, JSON in and out) with
  "mode": "everything" on a real photo's embedding (skimage coffee, 400x600, through the
  CI-sized encoder), filters off so that every mask is kept (random weights' predicted IoU and stability sit below the defaults),
  points_per_side 8 and 16.
- decoder only, batched vs one call per point: the same grid's points through the
  batched points decoder (points_per_batch 64) and through the single-prompt decoder one
  point per call (SamDecoder.decode, multimask), to show what batching buys.

Paths alternate round by round, so machine load hits them alike.

    python benchmarks/sam_everything.py [--rounds 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from devtools.local_s3 import skimage_photo

KNOBS = {"pred_iou_thresh": 0.0, "stability_score_thresh": 0.0, "box_nms_thresh": 1.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    os.environ["SMVISION_THREADS"] = str(args.threads)
    os.environ["SAM_EVERYTHING_MAX_ANSWER_MB"] = "1000"  # random weights: salt-and-pepper masks, long RLEs

    from PIL import Image

    from smvision.archive.build import extract_archive
    from smvision.archive.sam import build_sam_archive
    from smvision.container.handler import Handler
    from smvision.inflight import request_scope
    from smvision.models.sam.build import build_sam, sam_config
    from smvision.models.sam.decoder import SamDecoder
    from smvision.kinds.sam_prompts import parse_prompts
    from segment_anything import SamPredictor
    from segment_anything.utils.amg import build_point_grid
    import torch

    image = np.array(Image.open(skimage_photo("coffee.png")).convert("RGB"))
    size = image.shape[:2]
    torch.manual_seed(0)
    predictor = SamPredictor(build_sam(sam_config("vit_tiny_test")))
    predictor.set_image(image)
    embedding = predictor.get_image_embedding().numpy()
    buffer = io.BytesIO()
    np.save(buffer, embedding)
    inline = base64.b64encode(buffer.getvalue()).decode()

    with tempfile.TemporaryDirectory() as scratch:
        archive = build_sam_archive(Path(scratch) / "model.tar.gz", "sam-decode", "vit_tiny_test")
        model_dir = extract_archive(archive, Path(scratch) / "model")
        handler = Handler(str(model_dir))
        handler.load()
        single = SamDecoder(model_dir / "sam_decoder.onnx", threads=args.threads)
        batched = handler.model.everything.decoder

        def everything(side: int) -> tuple[float, int, dict]:
            body = {"image_embedding": inline, "original_size": list(size), "mode": "everything",
                    "points_per_side": side, **KNOBS}
            started = time.perf_counter()
            with request_scope(None) as inflight:
                data, _ = handler.invoke(json.dumps(body).encode(), "application/json", None)
            return time.perf_counter() - started, len(json.loads(data)["masks"]), dict(inflight.stages)

        def decoder_batched(points: np.ndarray) -> float:
            started = time.perf_counter()
            for start in range(0, len(points), 64):
                batched.decode(embedding, points[start : start + 64], size)
            return time.perf_counter() - started

        def decoder_per_point(points: np.ndarray) -> float:
            started = time.perf_counter()
            for point in points:
                prompts = parse_prompts({"points": [point.tolist()], "labels": [1]}, size, "bench")
                single.session.run(single.output_names, single.feed(embedding, size, prompts))
            return time.perf_counter() - started

        timings: dict[str, list[float]] = {}
        counts: dict[int, int] = {}
        stages: dict[int, dict] = {}
        everything(4)  # warm-up
        for _ in range(args.rounds):
            for side in (8, 16):
                seconds, count, stage_times = everything(side)
                timings.setdefault(f"everything {side}", []).append(seconds)
                counts[side], stages[side] = count, stage_times
            points = build_point_grid(8) * np.array(size)[None, ::-1]
            timings.setdefault("decoder batched 64 pts", []).append(decoder_batched(points))
            timings.setdefault("decoder per point 64 pts", []).append(decoder_per_point(points))

    print(f"SAM everything, vit_tiny_test (random weights, filters off), coffee 400x600, {args.threads} threads, "
          f"{args.rounds} rounds, median")
    for side in (8, 16):
        seconds = statistics.median(timings[f"everything {side}"])
        split = ", ".join(f"{k} {v:.2f}" for k, v in stages[side].items() if v >= 0.01)
        print(f"  points_per_side {side:2d}: {seconds:6.2f} s/image, {counts[side]:4d} masks, "
              f"{counts[side] / seconds:6.1f} masks/s  ({split})")
    batched_s = statistics.median(timings["decoder batched 64 pts"])
    single_s = statistics.median(timings["decoder per point 64 pts"])
    print(f"  decoder, 64 points: batched {batched_s:.2f} s, one call per point {single_s:.2f} s "
          f"(ratio {single_s / batched_s:.2f})")


if __name__ == "__main__":
    main()
