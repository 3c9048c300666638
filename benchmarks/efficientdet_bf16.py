"""Would bfloat16 on CPU keep EfficientDet's detections? fp32 vs bf16 on real photos.

For D0 on four real photos: how far bf16 moves the class scores and the box regression
(in input pixels) from fp32, how many of fp32's detections survive unchanged at a few
thresholds, and the forward time of each (alternating, batch 1). Weights: zylo117's
layout with random values whose statistics spread like a trained network's (BatchNorm
statistics away from identity; devtools.weights.random_state_dict, as the
tests use), since no trained checkpoint can be downloaded here.

    python benchmarks/efficientdet_bf16.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from PIL import Image

from devtools.local_s3 import skimage_photo
from devtools.weights import random_state_dict
from smvision.models.efficientdet import EfficientDet, EfficientDetector, efficientdet_config
from smvision.models.efficientdet.postprocess import postprocess
from smvision.models.efficientdet.preprocess import preprocess

PHOTOS = ("astronaut.png", "coffee.png", "rocket.jpg", "chelsea.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(2)
    config = efficientdet_config(0)
    with torch.device("meta"):  # only the zylo117 key layout (keys, shapes, order), no weights
        shapes = {key: tuple(value.shape) for key, value in EfficientDet(config).state_dict().items()}
    detector = EfficientDetector(config, random_state_dict(shapes))
    fp32 = detector.model
    bf16 = torch.nn.Module.to(__import__("copy").deepcopy(fp32), dtype=torch.bfloat16)
    images = [np.asarray(Image.open(skimage_photo(n)).convert("RGB")) for n in PHOTOS]
    batch, fits = preprocess(images, config.input_size, config.mean, config.std)
    with torch.inference_mode():
        reg32, cls32 = fp32(batch)
        reg16, cls16 = (t.float() for t in bf16(batch.to(torch.bfloat16)))
    anchors = detector.anchors((config.input_size, config.input_size))
    box_scale = torch.stack((anchors.h, anchors.w, anchors.h, anchors.w), dim=1)  # dy, dx scale with h, w
    print(f"D0 on {len(PHOTOS)} photos")
    print(f"class scores: max |bf16 - fp32| {float((cls16 - cls32).abs().max()):.2e} "
          f"(the tests allow scores rtol 1e-5)")
    shift = ((reg16 - reg32)[..., :2] * box_scale[:, :2]).abs().max()
    print(f"box centres: max shift {float(shift):.2f} input px (the tests allow 1e-3 px + 1e-4 relative)")
    for quantile in (0.999, 0.9999):
        thresholds = [float(np.quantile(c.max(dim=1).values.numpy(), quantile)) for c in cls32]
        found32 = postprocess(reg32, cls32, anchors, (config.input_size,) * 2, thresholds, [0.5] * 4, fits)
        found16 = postprocess(reg16, cls16, anchors, (config.input_size,) * 2, thresholds, [0.5] * 4, fits)
        kept, close, within = 0, 0, 0
        for a, b in zip(found32, found16):
            kept += len(a)
            for c, box in zip(a.class_ids, a.boxes):
                same_class = b.boxes[b.class_ids == c]
                error = np.abs(same_class - box).max(axis=1).min() if len(same_class) else np.inf
                close += bool(error <= 1.0)
                within += bool(error <= 1e-3 + 1e-4 * np.abs(box).max())
        print(f"threshold at the {quantile:.2%} score quantile: {kept} fp32 detections; bf16 has "
              f"{within} within the tests' tolerance, {close} within 1 px")
    one = batch[:1].contiguous(memory_format=torch.channels_last)
    times: dict[str, list[float]] = {"fp32": [], "bf16": []}
    with torch.inference_mode():
        for round_number in range(args.rounds + 1):
            for name in (("fp32", "bf16") if round_number % 2 else ("bf16", "fp32")):
                model, x = (fp32, one) if name == "fp32" else (bf16, one.to(torch.bfloat16))
                started = time.perf_counter()
                model(x)
                if round_number:
                    times[name].append(time.perf_counter() - started)
    f32, b16 = statistics.median(times["fp32"]), statistics.median(times["bf16"])
    print(f"forward, batch 1: fp32 {f32 * 1000:.0f} ms, bf16 {b16 * 1000:.0f} ms ({b16 / f32:.2f}x)")


if __name__ == "__main__":
    main()
