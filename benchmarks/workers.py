"""K worker processes vs 1: requests/s through `smvision serve` with EfficientDet D0.

Three servers on the same archive and photos (from a local S3), measured in alternating
rounds so load on a shared machine hits them alike:

  1 worker                   threads = cores (the default)
  K workers                  threads = cores // K each (the default: smvision.threads)
  K workers, all threads     SMVISION_THREADS=cores in each: the oversubscription the
                             default avoids (what every worker did before)

Each round sends the same requests from 2*K clients. Prints requests/s per round and the
median, and the ratios to 1 worker.

    python benchmarks/workers.py [--workers 2] [--requests 16] [--rounds 3]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

from common import BUCKET, PHOTOS, d0_model_dir, put_photos
from devtools.local_s3 import LocalS3
from smvision.deploy.server_process import smvision_serve
from smvision.threads import cpu_count


def round_rps(url: str, payloads: list[bytes], count: int, clients: int) -> float:
    sessions = [requests.Session() for _ in range(clients)]

    def one(i: int) -> None:
        response = sessions[i % clients].post(url + "/invocations", data=payloads[i % len(payloads)],
                                              headers={"Content-Type": "application/json"}, timeout=120)
        response.raise_for_status()

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(one, range(count)))
    return count / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--requests", type=int, default=16, help="requests per round and server")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    cores, k = cpu_count(), args.workers
    payloads = [json.dumps({"bucket": BUCKET, "key": n, "pred_threshold": 0.5}).encode() for n in PHOTOS]
    configs = [
        ("1 worker", 1, {}),
        (f"{k} workers", k, {}),
        (f"{k} workers, all threads", k, {"SMVISION_THREADS": str(cores)}),
    ]
    with tempfile.TemporaryDirectory() as tmp, LocalS3() as s3:
        put_photos(s3)
        model_dir = d0_model_dir(Path(tmp))
        with contextlib.ExitStack() as running:  # each ready once all its workers have loaded
            servers = [running.enter_context(smvision_serve(model_dir, env, ready_timeout_s=600, workers=workers))
                       for _, workers, env in configs]
            results: dict[str, list[float]] = {name: [] for name, _, _ in configs}
            for number in range(args.rounds):
                for (name, _, _), server in zip(configs, servers):
                    results[name].append(round_rps(server.url, payloads, args.requests, 2 * k))
                print(f"round {number + 1}: " + ", ".join(f"{n} {v[-1]:.2f}" for n, v in results.items()), flush=True)
    print(f"EfficientDet D0, {cores} cores, {2 * k} clients, {args.requests} requests x {args.rounds} rounds")
    base = statistics.median(results["1 worker"])
    for name, values in results.items():
        median = statistics.median(values)
        print(f"{name:<26} {median:6.2f} requests/s  ({median / base:.2f} x 1 worker)")


if __name__ == "__main__":
    main()
