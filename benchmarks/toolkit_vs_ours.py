"""The same archive and requests against our server and against the AWS toolkit, side by side.

    python benchmarks/toolkit_vs_ours.py [--case efficientdet-d0] [--call json-object]
        [--requests 40] [--clients 2] [--workers 1] [--archive model.tar.gz]

"Toolkit" is sagemaker-pytorch-inference 2.0.25 on TorchServe 0.12, as `serve` runs it in
the AWS PyTorch 2.6 inference image, natively from its own venv (built or reused by
tests/toolkit/setup_toolkit_venv.sh); "ours" is `smvision serve`. Both get the same
extracted archive (read-only), the same S3 (a moto server with skimage photos), the same
number of model workers, and the same requests; they run one after the other, never at
the same time, so they do not share the CPU.

Per server:
- startup: process start -> first 200 from POST /invocations (not /ping: TorchServe
  answers /ping 200 before its worker can serve, even while the worker crash-loops);
- latency p50 / p95 / mean over --requests sequential requests (after 3 warm-up ones);
- requests/s with --clients concurrent clients, --requests in all;
- resident memory: the sum of RSS over every process of the server (TorchServe's java
  frontend is re-parented away from the launcher, so "every process of its session"),
  idle after startup and the peak sampled during the load.

Every loop is bounded by --requests; everything started is stopped.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
import toolkit_harness as h  # noqa: E402


class RssSampler:
    """Peak of server.rss() sampled every `every` seconds while running."""

    def __init__(self, server: h.ServerProcess, every: float = 0.2) -> None:
        self.server, self.every, self.peak = server, every, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.server.rss())
            self._stop.wait(self.every)

    def __enter__(self) -> "RssSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(5)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def measure(server: h.ServerProcess, call: h.Call, bucket: str, args: argparse.Namespace, timeout: float) -> dict:
    result: dict[str, float] = {}
    result["startup_s"] = server.wait_ready(call, bucket, timeout)
    time.sleep(1.0)
    result["rss_idle_mb"] = server.rss() / 2**20
    body, headers = call.render(bucket), call.headers()
    url = server.url + "/invocations"
    for _ in range(3):
        h.post(url, body, headers)
    with RssSampler(server) as sampler:
        latencies = []
        for _ in range(args.requests):
            reply = h.post(url, body, headers)
            if reply.status != 200:
                raise RuntimeError(f"{server.label}: {reply.status} {reply.body[:300]!r}")
            latencies.append(reply.seconds)
        failures = []

        def one(_: int) -> None:
            reply = h.post(url, body, headers)
            if reply.status != 200:
                failures.append(reply.status)

        start = time.perf_counter()
        with ThreadPoolExecutor(args.clients) as pool:
            list(pool.map(one, range(args.requests)))
        elapsed = time.perf_counter() - start
    if failures:
        raise RuntimeError(f"{server.label}: {len(failures)} failed requests under load: {failures[:5]}")
    result["p50_ms"] = percentile(latencies, 0.5) * 1000
    result["p95_ms"] = percentile(latencies, 0.95) * 1000
    result["mean_ms"] = statistics.fmean(latencies) * 1000
    result["rps"] = args.requests / elapsed
    result["rss_peak_mb"] = sampler.peak / 2**20
    return result


ROWS = (
    ("startup_s", "startup to first good answer (s)", "{:.1f}"),
    ("p50_ms", "latency p50 (ms)", "{:.1f}"),
    ("p95_ms", "latency p95 (ms)", "{:.1f}"),
    ("mean_ms", "latency mean (ms)", "{:.1f}"),
    ("rps", "requests/s ({clients} clients)", "{:.2f}"),
    ("rss_idle_mb", "resident memory idle (MB)", "{:.0f}"),
    ("rss_peak_mb", "resident memory peak (MB)", "{:.0f}"),
)


def table(ours: dict, theirs: dict, args: argparse.Namespace) -> str:
    lines = [f"{'':38} {'ours':>10} {'toolkit':>10} {'toolkit/ours':>13}"]
    for key, label, fmt in ROWS:
        ratio = theirs[key] / ours[key] if ours[key] else float("nan")
        lines.append(
            f"{label.format(clients=args.clients):38} {fmt.format(ours[key]):>10} {fmt.format(theirs[key]):>10} {ratio:>12.2f}x"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--case", default=h.CASES[0].name, choices=[c.name for c in h.CASES])
    parser.add_argument("--call", help="which of the case's requests (default: its first)")
    parser.add_argument("--requests", type=int, default=40, help="sequential requests, and again under load")
    parser.add_argument("--clients", type=int, default=2, help="concurrent clients for requests/s")
    parser.add_argument("--workers", type=int, default=1, help="model workers in both servers")
    parser.add_argument("--archive", type=Path, help="an already built model.tar.gz (default: build one)")
    parser.add_argument("--timeout", type=float, default=300, help="seconds to wait for a first good answer")
    args = parser.parse_args(argv)
    if not 1 <= args.requests <= 5000 or not 1 <= args.clients <= 64:
        parser.error("--requests 1-5000, --clients 1-64")

    case = next(c for c in h.CASES if c.name == args.case)
    call = next((c for c in case.calls if c.name == args.call), None) if args.call else case.calls[0]
    if call is None or call.status != 200:
        parser.error(f"--call must name one of {case.name}'s good requests")

    venv = h.ensure_toolkit_venv()
    root = Path(tempfile.mkdtemp(prefix="smvision-bench-toolkit-"))
    try:
        archive = args.archive or h.build_archive(case, root)
        env = {
            "SAGEMAKER_MODEL_SERVER_WORKERS": str(args.workers),
            "SAGEMAKER_PROGRAM": "inference.py",
            **case.env,
        }
        results = {}
        with h.LocalS3(root / "moto.log") as s3, h.ToolkitLock():
            s3.put(h.BUCKET, {name: h.skimage_photo(name).read_bytes() for name in h.PHOTOS})
            env.update(s3.env)
            starts = {
                "ours": lambda: h.OurServer(h.extract_archive(archive, root / "ours" / "model"), root / "ours", env),
                "toolkit": lambda: h.ToolkitServer(
                    venv, h.extract_archive(archive, root / "toolkit" / "base" / "model"), root / "toolkit", env
                ),
            }
            for key, start in starts.items():
                server = start()
                try:
                    results[key] = measure(server, call, h.BUCKET, args, args.timeout)
                finally:
                    server.stop()
                print(f"{key}: done", file=sys.stderr)
        print(
            f"\n{case.name}, request {call.name!r} ({call.content_type}), {args.requests} requests, "
            f"{args.workers} worker(s), {args.clients} clients for requests/s, {os.cpu_count()} CPUs\n"
        )
        print(table(results["ours"], results["toolkit"], args))
    finally:
        h.make_writable(root)
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
