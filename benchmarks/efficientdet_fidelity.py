"""EfficientDet on ONNX Runtime: how far its class scores sit from torch's, and what each
way of keeping them equal costs.

Trained-like weights (devtools.weights.trained_like_efficientdet: BatchNorm
calibrated on four photos, smooth kernels), the four photos as the batch; per variant the
largest class-score and box-regression difference against the torch path as served (BN
folded, channels_last) and the forward time at batch 1 (median of alternating rounds):

- export as torch writes it, ORT_ENABLE_ALL (what archives held before the split);
- the same with ORT's NchwcTransformer disabled (exact, but without the NCHWc kernels);
- today's export (squeeze-and-excitation means split), ORT_ENABLE_ALL (the default);
- torch itself.

    python benchmarks/efficientdet_fidelity.py [--coefs 0,1] [--rounds 15] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
from PIL import Image

from common import PHOTOS
from devtools.local_s3 import skimage_photo


def session(onnx_bytes: bytes, threads: int, disabled: tuple[str, ...] = ()):
    """create_session's options (all optimisations, sequential), threads that sleep when idle."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"], disabled_optimizers=list(disabled))


def measure(coef: int, rounds: int, threads: int) -> None:
    import torch

    from devtools.weights import trained_like_efficientdet
    from smvision.archive.efficientdet_onnx import split_global_average_pools, torch_onnx_export
    from smvision.models.efficientdet import EfficientDetector
    from smvision.models.efficientdet.resize import preprocess_numpy

    torch.set_num_threads(threads)
    photos = [np.asarray(Image.open(skimage_photo(name)).convert("RGB")) for name in PHOTOS]
    model = trained_like_efficientdet(coef, photos)
    config = model.config
    batch, _ = preprocess_numpy(photos, config.input_size, config.mean, config.std)
    detector = EfficientDetector(config, model.state_dict())

    def torch_forward(images: np.ndarray):
        with torch.inference_mode():
            x = torch.from_numpy(images).contiguous(memory_format=torch.channels_last)
            return [t.numpy() for t in detector.model(x)]

    raw = torch_onnx_export(model)
    split = split_global_average_pools(raw)
    variants = {
        "export as written, ORT_ENABLE_ALL": session(raw, threads).run,
        "export as written, NCHWc disabled": session(raw, threads, ("NchwcTransformer",)).run,
        "means split, ORT_ENABLE_ALL (default)": session(split, threads).run,
    }
    expected_reg, expected_cls = torch_forward(batch)
    print(f"\nD{coef} at {config.input_size}, {len(photos)} photos, top score {expected_cls.max():.3f}")
    print(f"{'variant':<40}{'max |d score|':>14}{'max |d box|':>13}{'ms, batch 1':>13}{'vs default':>12}")
    errors = {}
    for name, run in variants.items():
        regression, classification = run(None, {"images": batch})
        errors[name] = (np.abs(classification - expected_cls).max(), np.abs(regression - expected_reg).max())
    errors["torch (BN folded, channels_last)"] = (0.0, 0.0)
    runners = {name: (lambda run=run: run(None, {"images": batch[:1]})) for name, run in variants.items()}
    runners["torch (BN folded, channels_last)"] = lambda: torch_forward(batch[:1])
    times: dict[str, list[float]] = {name: [] for name in runners}
    for round_number in range(rounds + 1):  # round 0 warms up
        order = list(runners) if round_number % 2 else list(runners)[::-1]
        for name in order:
            started = time.perf_counter()
            runners[name]()
            if round_number:
                times[name].append(time.perf_counter() - started)
    default = statistics.median(times["means split, ORT_ENABLE_ALL (default)"])
    for name, (score, box) in errors.items():
        ms = statistics.median(times[name])
        print(f"{name:<40}{score:>14.2e}{box:>13.2e}{ms * 1000:>13.1f}{ms / default:>11.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--coefs", default="0,1", help="compound coefficients")
    parser.add_argument("--rounds", type=int, default=15, help="alternating timing rounds")
    parser.add_argument("--threads", type=int, default=2, help="threads for torch and ONNX Runtime")
    args = parser.parse_args()
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start")
    for coef in (int(c) for c in args.coefs.split(",")):
        measure(coef, args.rounds, args.threads)
    print(f"load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
