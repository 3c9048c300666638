"""A SAM .mar under TorchServe against the same payload under `smvision serve`, side by side.

    python benchmarks/torchserve_mar.py [--kind sam-decode] [--call inline-embedding]
        [--requests 40] [--rounds 4] [--ts decode_input_request=false]

Builds sam_vit_tiny_test_<kind>.mar with `smvision archive mar`, starts TorchServe 0.12
(the toolkit test venv, natively) with it and `smvision serve` on the .mar's extracted
contents, warms both up, then sends --requests sequential requests (toolkit_harness's
call of that name) in --rounds alternating rounds, so that other load on the machine hits
both alike. Prints each server's startup (first 200) and p50 / p95 / mean latency, and
the ratio of medians. Every loop is bounded; everything started is stopped.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
import zipfile
from pathlib import Path

from devtools import toolkit_harness as h
from devtools.local_s3 import S3_ENV, LocalS3
from devtools.toolkit_harness import build_mar
from smvision.deploy.stats import percentile

CASES = {"sam-decode": h.SAM_DECODE, "sam-encode": h.SAM_ENCODE}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--kind", choices=sorted(CASES), default="sam-decode")
    parser.add_argument("--call", default=None, help="toolkit_harness call name (default: the case's first)")
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--ts", action="append", default=[], metavar="KEY=VALUE",
                        help="a TorchServe config.properties setting, e.g. decode_input_request=false")
    args = parser.parse_args(argv)
    if not 1 <= args.rounds <= args.requests <= 2000:
        parser.error("1 <= --rounds <= --requests <= 2000")
    settings = dict(item.split("=", 1) for item in args.ts)
    case = CASES[args.kind]
    calls = {c.name: c for c in case.calls}
    call = calls[args.call] if args.call else case.calls[0]
    if call.status != 200:
        parser.error(f"{call.name} is an error case; pick one of {[c.name for c in case.calls if c.status == 200]}")

    venv = h.ensure_toolkit_venv()
    root = Path(tempfile.mkdtemp(prefix="smvision-bench-mar-"))
    try:
        store = root / "store"
        done = build_mar(args.kind, store)
        if done.returncode != 0:
            sys.exit(done.stderr[-2000:])
        mar = Path(done.stdout.strip().splitlines()[-1])
        model_dir = root / "ours" / "model"
        with zipfile.ZipFile(mar) as archive:
            archive.extractall(model_dir)
        with LocalS3(root / "moto.log") as s3:
            s3.put(h.BUCKET, h.bucket_objects())
            env = {k: os.environ[k] for k in S3_ENV if k in os.environ}
            with h.ToolkitLock():
                servers = {}
                try:
                    # one after the other, each starting alone
                    ours_env = {**env, "SAGEMAKER_MODEL_SERVER_WORKERS": "1"}
                    servers["ours"] = h.our_server(model_dir, root / "ours", ours_env, call, h.BUCKET, 240).start()
                    startup = {"ours": servers["ours"].wait_ready().ready_after}
                    servers["torchserve"] = h.torchserve(venv, store, root / "torchserve", env, settings).start()
                    h.wait_model(servers["torchserve"], mar.stem, call, h.BUCKET, 240)
                    startup["torchserve"] = time.monotonic() - servers["torchserve"].started_at
                    send = {
                        "ours": lambda: h.invoke(servers["ours"], call, h.BUCKET),
                        "torchserve": lambda: h.predict(servers["torchserve"], mar.stem, call, h.BUCKET),
                    }
                    for name in send:  # warm-up
                        for _ in range(3):
                            send[name]()
                    seconds: dict[str, list[float]] = {name: [] for name in send}
                    per_round = max(1, args.requests // args.rounds)
                    for _ in range(args.rounds):
                        for name, fire in send.items():
                            for _ in range(per_round):
                                reply = fire()
                                if reply.status != 200:
                                    sys.exit(f"{name}: {reply.status} {reply.body[:300]!r}")
                                seconds[name].append(reply.seconds)
                finally:
                    for server in servers.values():
                        server.stop()
        print(f"{args.kind} ({call.name}), vit_tiny_test, {per_round * args.rounds} requests each, {args.rounds} rounds"
              + (f", TorchServe {settings}" if settings else ""))
        for name, values in seconds.items():
            ms = sorted(v * 1000 for v in values)
            print(
                f"  {name:10s} startup {startup[name]:5.1f} s  p50 {percentile(ms, 0.5):7.1f} ms  "
                f"p95 {percentile(ms, 0.95):7.1f} ms  mean {statistics.fmean(ms):7.1f} ms"
            )
        ratio = percentile(seconds["torchserve"], 0.5) / percentile(seconds["ours"], 0.5)
        print(f"  torchserve p50 / ours p50 = {ratio:.2f}")
    finally:
        h.make_writable(root)
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
