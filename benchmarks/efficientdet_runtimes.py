"""EfficientDet on CPU: torch vs ONNX Runtime, batch sizes, HTTP throughput, cold start.

One run, alternating rounds so machine load hits every variant alike:
1. forward ms per image, torch (BN folded, channels_last) vs ONNX Runtime (the archive's
   export), batch 1/2/4/8, D0-D2 at their own input sizes, random zylo117-layout weights;
2. end to end over HTTP: `smvision serve` on a D0 archive, photos from a local S3, a CSV
   request of 8 photos per call: ONNX Runtime at the default batch size (1 on CPU), ONNX
   Runtime at batch 8, torch at batch 1, calls alternating between the three servers;
3. cold start: process start to the first good answer of `serve` (D0, inline photo),
   ONNX Runtime (the default) vs torch, alternating.

    python benchmarks/efficientdet_runtimes.py [--rounds 3] [--coefs 0,1,2] [--calls 6]
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import requests

from common import BUCKET, PHOTOS, d0_model_dir, put_photos
from devtools.local_s3 import LocalS3, skimage_photo
from smvision.deploy.server_process import smvision_serve

BATCHES = (1, 2, 4, 8)


def quiet_session(onnx_bytes: bytes, threads: int):
    """create_session's settings, but ONNX Runtime's threads sleep rather than spin after a
    run: in one process with torch, spinning threads would slow torch's next forward."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(onnx_bytes, sess_options=options, providers=["CPUExecutionProvider"])


def forward_table(coefs: list[int], rounds: int, threads: int) -> None:
    """Median forward ms per image, torch and ONNX Runtime, alternating within each round."""
    import torch

    from smvision.archive.efficientdet_onnx import export_efficientdet_onnx
    from smvision.models.efficientdet import EfficientDet, EfficientDetector, OnnxEfficientDetector, efficientdet_config

    torch.set_num_threads(threads)
    runners = {}
    for coef in coefs:
        torch.manual_seed(coef)
        config = efficientdet_config(coef)
        model = EfficientDet(config).eval()
        torch_detector = EfficientDetector(config, model.state_dict())
        onnx_bytes = export_efficientdet_onnx(model)
        onnx_detector = OnnxEfficientDetector(config, onnx_bytes, threads=threads)
        onnx_detector.session = quiet_session(onnx_bytes, threads)
        runners[coef] = (config.input_size, torch_detector, onnx_detector)

    def torch_forward(detector, batch):
        with torch.inference_mode():
            detector.model(torch.from_numpy(batch).contiguous(memory_format=torch.channels_last))

    times: dict[tuple[int, int, str], list[float]] = {}
    for round_number in range(rounds + 1):  # round 0 warms every shape up and is not counted
        for coef, (size, torch_detector, onnx_detector) in runners.items():
            for batch_size in BATCHES:
                batch = np.random.default_rng(batch_size).standard_normal((batch_size, 3, size, size), np.float32)
                order = [("torch", lambda: torch_forward(torch_detector, batch)), ("onnx", lambda: onnx_detector.forward(batch))]
                if round_number % 2:
                    order.reverse()
                for name, run in order:
                    started = time.perf_counter()
                    run()
                    if round_number:
                        times.setdefault((coef, batch_size, name), []).append((time.perf_counter() - started) / batch_size)
    print(f"\n1. forward ms per image (median of {rounds} alternating rounds, {threads} threads, fp32)")
    print(f"{'model':<6}{'batch':>6}{'torch':>10}{'onnx':>10}{'onnx/torch':>12}")
    for coef in coefs:
        for batch_size in BATCHES:
            t = statistics.median(times[(coef, batch_size, "torch")]) * 1000
            o = statistics.median(times[(coef, batch_size, "onnx")]) * 1000
            print(f"{'D' + str(coef):<6}{batch_size:>6}{t:>10.1f}{o:>10.1f}{o / t:>12.2f}")


def first_good_answer(model_dir: Path, env: dict[str, str], body: str) -> float:
    """Seconds from starting `serve` to its first 200 answer with detections."""
    server = smvision_serve(model_dir, env, poll_s=0.01).start()
    try:
        def detections() -> bool:
            response = requests.post(server.url + "/invocations", data=body,
                                     headers={"Content-Type": "application/json"}, timeout=10)
            return response.status_code == 200 and "detections" in response.json()

        server.wait_until(detections, 120, "a first good answer")
        return time.monotonic() - server.started_at
    finally:
        server.stop()


def http_and_cold_start(calls: int, rounds: int, pred_threshold: float) -> None:
    with tempfile.TemporaryDirectory() as tmp, LocalS3() as s3:
        put_photos(s3)
        model_dir = d0_model_dir(Path(tmp))

        variants = {
            "onnx, batch 1 (default)": {},
            "onnx, batch 8": {"SMVISION_BATCH_SIZE": "8"},
            "torch, batch 1": {"SMVISION_RUNTIME": "torch"},
        }
        keys = [f"s3://{BUCKET}/{PHOTOS[i % len(PHOTOS)]}" for i in range(8)]
        csv = "\n".join(keys)
        env_threshold = {"DEFAULT_PRED_THRESHOLD": str(pred_threshold)}
        with contextlib.ExitStack() as stack:
            servers = {name: stack.enter_context(smvision_serve(model_dir, {**env, **env_threshold},
                                                                log_path=Path(tmp) / f"serve-{i}.log"))
                       for i, (name, env) in enumerate(variants.items())}
            session = requests.Session()
            elapsed: dict[str, list[float]] = {name: [] for name in variants}
            for call in range(calls + 1):  # call 0 warms up
                names = list(servers) if call % 2 else list(servers)[::-1]
                for name in names:
                    started = time.perf_counter()
                    response = session.post(servers[name].url + "/invocations", data=csv, headers={"Content-Type": "text/csv"}, timeout=300)
                    response.raise_for_status()
                    assert len(response.json()) == 8
                    if call:
                        elapsed[name].append(time.perf_counter() - started)
        print(f"\n2. end to end over HTTP, D0: CSV requests of 8 photos from local S3, {calls} alternating calls each "
              f"(pred_threshold {pred_threshold})")
        base = 8 / statistics.median(elapsed["onnx, batch 1 (default)"])
        for name, seconds in elapsed.items():
            rate = 8 / statistics.median(seconds)
            print(f"{name:<26}{rate:>8.2f} images/s  ({rate / base:.2f}x the default)")

        body = json.dumps({"image": base64.b64encode(skimage_photo("coffee.png").read_bytes()).decode()})
        starts: dict[str, list[float]] = {"onnx (default)": [], "torch": []}
        for round_number in range(rounds):
            names = list(starts) if round_number % 2 == 0 else list(starts)[::-1]
            for name in names:
                env = {} if name.startswith("onnx") else {"SMVISION_RUNTIME": "torch"}
                starts[name].append(first_good_answer(model_dir, env, body))
        print(f"\n3. cold start to the first good answer of `serve` (D0, inline photo), {rounds} alternating rounds")
        for name, seconds in starts.items():
            print(f"{name:<26}median {statistics.median(seconds):.2f} s  (all: {', '.join(f'{s:.2f}' for s in seconds)})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds for forward times and cold starts")
    parser.add_argument("--coefs", default="0,1,2", help="compound coefficients for the forward table")
    parser.add_argument("--calls", type=int, default=6, help="HTTP calls of 8 photos per server")
    parser.add_argument("--threads", type=int, default=2, help="threads for torch and ONNX Runtime")
    parser.add_argument("--pred-threshold", type=float, default=0.5,
                        help="random weights put every anchor near 0.01; 0.5 keeps NMS realistic")
    args = parser.parse_args()
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start")
    forward_table([int(c) for c in args.coefs.split(",")], args.rounds, args.threads)
    http_and_cold_start(args.calls, args.rounds, args.pred_threshold)
    print(f"load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
