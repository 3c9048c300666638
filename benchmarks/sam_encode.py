"""SAM image encoder speed: seconds per image in fp32 and bf16 (or fp16), side by side.

The encoder the sam-encode and sam kinds serve (smvision.models.sam.encoder.SamEncoder),
with random weights (speed does not depend on them), on a real photo. Precisions
alternate round by round, so machine load hits each alike; the first forward of each
(warm-up) is not counted. Also prints the cosine similarity of each precision's
embedding to fp32's.

    python benchmarks/sam_encode.py [--model-type vit_b] [--precisions fp32,bf16] [--rounds 3]
                                    [--batch 1] [--device cpu|cuda] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from devtools.local_s3 import skimage_photo


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-type", default="vit_b")
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=1, help="images per forward pass")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: smvision.threads)")
    args = parser.parse_args()

    import torch

    from smvision.images import decode_image
    from smvision.models.sam.build import build_image_encoder, sam_config
    from smvision.models.sam.encoder import SamEncoder
    from smvision.threads import threads_per_worker

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    torch.set_num_threads(args.threads or threads_per_worker())
    config = sam_config(args.model_type)
    torch.manual_seed(0)
    state_dict = build_image_encoder(config).state_dict()
    image = decode_image(skimage_photo("astronaut.png").read_bytes(), "astronaut")
    images = [image] * args.batch

    encoders = {}
    for precision in args.precisions.split(","):
        started = time.perf_counter()
        encoders[precision] = SamEncoder(config, state_dict, device=device, precision=precision)
        encoders[precision].encode(images)  # warm-up, not counted
        print(f"{precision}: loaded and warmed up in {time.perf_counter() - started:.1f} s", flush=True)

    def run(encoder) -> tuple[float, np.ndarray]:
        if device == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        out = encoder.encode(images)
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - started, out[0].array

    seconds: dict[str, list[float]] = {p: [] for p in encoders}
    arrays: dict[str, np.ndarray] = {}
    for number in range(args.rounds):
        for precision, encoder in encoders.items():
            took, arrays[precision] = run(encoder)
            seconds[precision].append(took / args.batch)
            print(f"round {number + 1} {precision}: {took / args.batch:.3f} s per image", flush=True)

    name = torch.cuda.get_device_name() if device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"\nSAM {args.model_type} image encoder, 1024x1024 input, batch {args.batch}, {name}, {args.rounds} rounds")
    base = statistics.median(seconds[next(iter(seconds))])
    reference = arrays.get("fp32")
    for precision, values in seconds.items():
        median = statistics.median(values)
        line = f"  {precision}: {median:.3f} s per image (median), {1 / median:.2f} images/s, x{base / median:.2f}"
        if reference is not None:
            a, b = arrays[precision].ravel().astype(np.float64), reference.ravel().astype(np.float64)
            line += f", cosine to fp32 {float(a @ b / np.linalg.norm(a) / np.linalg.norm(b)):.5f}"
        print(line)


if __name__ == "__main__":
    main()
