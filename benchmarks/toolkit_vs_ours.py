"""The same archive and requests against our server and against the AWS toolkit, side by side.

    python benchmarks/toolkit_vs_ours.py [--case efficientdet-d0] [--call json-object]
        [--requests 40] [--clients 2] [--workers 1] [--rounds 4] [--archive model.tar.gz]

"Toolkit" is sagemaker-pytorch-inference 2.0.25 on TorchServe 0.12, as `serve` runs it in
the AWS PyTorch 2.6 inference image, natively from its own venv (built or reused by
devtools/toolkit/setup_toolkit_venv.sh); "ours" is `smvision serve`. Both get the same
extracted archive (read-only), the same S3 (a moto server with skimage photos), the same
number of model workers, and the same requests.

Per server:
- startup: process start -> first 200 from POST /invocations (not /ping: TorchServe
  answers /ping 200 before its worker can serve, even while the worker crash-loops);
  the two start one after the other, each alone on the machine;
- latency p50 / p95 / mean over --requests sequential requests (after 3 warm-up ones);
- requests/s with --clients concurrent clients, --requests in all;
- memory: the sum over every process of the server (TorchServe's java frontend is
  re-parented away from the launcher, so "every process of its session") of RSS, and of
  USS (private pages only: RSS counts libtorch's shared pages once per process that maps
  them); idle after startup, and the peak sampled under load.
Then both stay up and the measurements alternate in --rounds rounds, so that whatever else
runs on the machine weighs on both alike.

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

from devtools import toolkit_harness as h
from devtools.local_s3 import LocalS3, skimage_photo
from smvision.deploy.server_process import ServerProcess
from smvision.deploy.stats import percentile


class MemorySampler:
    """Peaks of h.rss(server) (every `every` s) and h.uss(server) (every `uss_every` s),
    sampled only while running (reading smaps_rollup costs CPU: keep it rare)."""

    def __init__(self, server: ServerProcess, every: float = 0.25, uss_every: float = 2.0) -> None:
        self.server, self.every, self.uss_every = server, every, uss_every
        self.rss_peak = self.uss_peak = 0
        self._running = threading.Event()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        last_uss = 0.0
        while not self._done.is_set():
            if not self._running.wait(0.1):
                continue
            self.rss_peak = max(self.rss_peak, h.rss(self.server))
            if time.monotonic() - last_uss >= self.uss_every:
                self.uss_peak = max(self.uss_peak, h.uss(self.server))
                last_uss = time.monotonic()
            self._done.wait(self.every)

    def resume(self) -> None:
        self._running.set()

    def pause(self) -> None:
        self._running.clear()

    def close(self) -> None:
        self._done.set()
        self._thread.join(5)


class Measured:
    """One server's numbers, gathered over several rounds."""

    def __init__(self, server: ServerProcess, call: h.Call, bucket: str) -> None:
        self.server, self.body, self.headers = server, call.render(bucket), call.headers()
        self.url = server.url + "/invocations"
        self.latencies: list[float] = []
        self.load_requests, self.load_seconds = 0, 0.0
        self.result: dict[str, float] = {}
        self.sampler = MemorySampler(server)

    def post(self) -> h.Reply:
        reply = h.post(self.url, self.body, self.headers)
        if reply.status != 200:
            raise RuntimeError(f"{self.server.name}: {reply.status} {reply.body[:300]!r}")
        return reply

    def idle(self) -> None:
        time.sleep(1.0)
        self.result["rss_idle_mb"] = h.rss(self.server) / 2**20
        self.result["uss_idle_mb"] = h.uss(self.server) / 2**20
        for _ in range(3):  # warm-up
            self.post()

    def round(self, n: int, clients: int) -> None:
        """n sequential requests (latency), then n from `clients` at once (requests/s)."""
        self.sampler.resume()
        try:
            self.latencies += [self.post().seconds for _ in range(n)]
            start = time.perf_counter()
            with ThreadPoolExecutor(clients) as pool:
                list(pool.map(lambda _: self.post(), range(n)))
            self.load_seconds += time.perf_counter() - start
            self.load_requests += n
        finally:
            self.sampler.pause()

    def finish(self) -> dict[str, float]:
        self.sampler.close()
        self.result["p50_ms"] = percentile(self.latencies, 0.5) * 1000
        self.result["p95_ms"] = percentile(self.latencies, 0.95) * 1000
        self.result["mean_ms"] = statistics.fmean(self.latencies) * 1000
        self.result["rps"] = self.load_requests / self.load_seconds
        self.result["rss_peak_mb"] = self.sampler.rss_peak / 2**20
        self.result["uss_peak_mb"] = self.sampler.uss_peak / 2**20
        return self.result


ROWS = (
    ("startup_s", "startup to first good answer (s)", "{:.1f}"),
    ("p50_ms", "latency p50 (ms)", "{:.1f}"),
    ("p95_ms", "latency p95 (ms)", "{:.1f}"),
    ("mean_ms", "latency mean (ms)", "{:.1f}"),
    ("rps", "requests/s ({clients} clients)", "{:.2f}"),
    ("rss_idle_mb", "memory idle, sum of RSS (MB)", "{:.0f}"),
    ("rss_peak_mb", "memory peak, sum of RSS (MB)", "{:.0f}"),
    ("uss_idle_mb", "memory idle, sum of USS (MB)", "{:.0f}"),
    ("uss_peak_mb", "memory peak, sum of USS (MB)", "{:.0f}"),
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
    parser.add_argument("--rounds", type=int, default=4, help="alternations between the two servers")
    parser.add_argument("--archive", type=Path, help="an already built model.tar.gz (default: build one)")
    parser.add_argument("--timeout", type=float, default=300, help="seconds to wait for a first good answer")
    args = parser.parse_args(argv)
    if not 1 <= args.requests <= 5000 or not 1 <= args.clients <= 64 or not 1 <= args.rounds <= args.requests:
        parser.error("--requests 1-5000, --clients 1-64, --rounds 1-requests")

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
        measured: dict[str, Measured] = {}
        servers: list[ServerProcess] = []
        with LocalS3(root / "moto.log") as s3, h.ToolkitLock():
            s3.put(h.BUCKET, {name: skimage_photo(name).read_bytes() for name in h.PHOTOS})
            env.update(s3.env)
            starts = {
                "ours": lambda: h.our_server(h.extract_archive(archive, root / "ours" / "model"), root / "ours", env,
                                             call, h.BUCKET, args.timeout),
                "toolkit": lambda: h.toolkit_server(
                    venv, h.extract_archive(archive, root / "toolkit" / "base" / "model"), root / "toolkit", env,
                    call, h.BUCKET, args.timeout,
                ),
            }
            try:
                # start one at a time (startup is measured alone), then keep both up and
                # alternate rounds, so load from anything else on the machine hits both alike
                for key, start in starts.items():
                    server = start()
                    servers.append(server)
                    startup = server.start_and_wait().ready_after
                    measured[key] = Measured(server, call, h.BUCKET)
                    measured[key].result["startup_s"] = startup
                    measured[key].idle()
                    print(f"{key}: first good answer after {startup:.1f} s", file=sys.stderr)
                per_round = max(1, args.requests // args.rounds)
                for number in range(args.rounds):
                    for key, m in measured.items():
                        m.round(per_round, args.clients)
                    print(f"round {number + 1}/{args.rounds} done", file=sys.stderr)
                results = {key: m.finish() for key, m in measured.items()}
            finally:
                for server in servers:
                    server.stop()
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
