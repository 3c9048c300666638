"""EfficientDet D0: in-process predict vs HTTP end to end through `smvision serve`.

Same archive, same photos (from a local S3), same request bodies, the two paths
alternating call by call. Prints median and p95 latency for both and their ratio, then
requests/s with 1 and 4 concurrent clients.

    python benchmarks/efficientdet_e2e.py [--requests 20] [--pred-threshold 0.5]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

from common import BUCKET, PHOTOS, d0_model_dir, put_photos
from devtools.local_s3 import LocalS3
from smvision.deploy.server_process import smvision_serve
from smvision.deploy.stats import percentile


def bodies(pred_threshold: float) -> list[bytes]:
    return [json.dumps({"bucket": BUCKET, "key": n, "pred_threshold": pred_threshold}).encode() for n in PHOTOS]


def load_in_process(model_dir: Path):
    """The archive's own entry script, imported into this process (no HTTP).

    Loaded from its file: the toolkit puts <model dir>/code on PYTHONPATH, but here that
    would only matter for `smvision`, which this process has already imported from the
    installed package (the code the archive copied), exactly as before."""
    spec = importlib.util.spec_from_file_location("inference", model_dir / "code" / "inference.py")
    inference = importlib.util.module_from_spec(spec)
    sys.modules["inference"] = inference  # as an import would (its dataclasses look it up)
    spec.loader.exec_module(inference)
    return inference, inference.model_fn(str(model_dir))


def call_in_process(handler, model, body: bytes) -> float:
    started = time.perf_counter()
    request = handler.input_fn(body, "application/json")
    handler.output_fn(handler.predict_fn(request, model), "application/json")
    return time.perf_counter() - started


def call_http(session: requests.Session, url: str, body: bytes) -> float:
    started = time.perf_counter()
    session.post(url, data=body, headers={"Content-Type": "application/json"}).raise_for_status()
    return time.perf_counter() - started


def interleaved(handler, model, url: str, payloads: list[bytes], count: int) -> tuple[list[float], list[float]]:
    """Alternate in-process and HTTP calls on the same bodies, so load on a shared
    machine hits both paths alike."""
    session = requests.Session()
    local, http = [], []
    for i in range(count):
        body = payloads[i % len(payloads)]
        local.append(call_in_process(handler, model, body))
        http.append(call_http(session, url, body))
    return local, http


def over_http(url: str, payloads: list[bytes], count: int, clients: int) -> tuple[list[float], float]:
    session_per_client = [requests.Session() for _ in range(clients)]

    def one(i: int) -> float:
        session = session_per_client[i % clients]
        started = time.perf_counter()
        response = session.post(url, data=payloads[i % len(payloads)], headers={"Content-Type": "application/json"})
        response.raise_for_status()
        return time.perf_counter() - started

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        times = list(pool.map(one, range(count)))
    return times, count / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=20, help="requests per measurement")
    parser.add_argument("--pred-threshold", type=float, default=0.5,
                        help="random weights put every anchor over 0.2; 0.5 keeps NMS realistic")
    args = parser.parse_args()
    payloads = bodies(args.pred_threshold)
    with tempfile.TemporaryDirectory() as tmp, LocalS3() as s3:
        put_photos(s3)
        model_dir = d0_model_dir(Path(tmp))

        handler, model = load_in_process(model_dir)
        with smvision_serve(model_dir, ready_timeout_s=180) as server:
            url = server.url
            local, http_one = interleaved(handler, model, url + "/invocations", payloads, args.requests)
            _, rps_one = over_http(url + "/invocations", payloads, args.requests, 1)
            _, rps_four = over_http(url + "/invocations", payloads, args.requests, 4)

    p50_local, p50_http = percentile(local, 0.5), percentile(http_one, 0.5)
    print(f"EfficientDet D0, random weights, pred_threshold {args.pred_threshold}, {args.requests} requests, "
          f"photos {', '.join(PHOTOS)}")
    print(f"{'path':<28}{'p50 ms':>10}{'p95 ms':>10}")
    print(f"{'in-process handler':<28}{p50_local * 1000:>10.1f}{percentile(local, 0.95) * 1000:>10.1f}")
    print(f"{'HTTP through serve':<28}{p50_http * 1000:>10.1f}{percentile(http_one, 0.95) * 1000:>10.1f}")
    print(f"HTTP / in-process p50 ratio: {p50_http / p50_local:.3f} ({(p50_http - p50_local) * 1000:+.1f} ms)")
    print(f"requests/s: 1 client {rps_one:.2f}, 4 clients {rps_four:.2f}")


if __name__ == "__main__":
    main()
