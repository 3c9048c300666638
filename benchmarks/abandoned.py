"""How long an abandoned request keeps a worker busy after its 504.

Serves EfficientDet D0 (random weights, photos from a local S3) with a short
SAGEMAKER_MODEL_SERVER_TIMEOUT, sends one CSV of N lines (far more work than the
timeout allows), and after its 504 sends one-image requests until one is answered 200.
Prints the time from the 504 to that answer (the worker's busy time plus one image), and
the server's own count from its log when it has one.

    python benchmarks/abandoned.py [--lines 1000] [--timeout 6] [--give-up 600]
                                   [--server-path DIR]

--server-path puts DIR first on the server's PYTHONPATH: a directory holding another
version's smvision package (its code/smvision with its container/ copied in as
smvision/container) measures that version with the same archive and requests.
"""

from __future__ import annotations

import argparse
import os
import re
import tempfile
import time
from pathlib import Path

import requests

from common import BUCKET, d0_model_dir, put_photos
from devtools.local_s3 import LocalS3
from smvision.deploy.server_process import smvision_serve, wait_until


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=1000)
    parser.add_argument("--timeout", type=float, default=6.0, help="SAGEMAKER_MODEL_SERVER_TIMEOUT")
    parser.add_argument("--give-up", type=float, default=600.0, help="stop waiting after this many seconds")
    parser.add_argument("--server-path", help="a directory put first on the server's PYTHONPATH")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, LocalS3() as s3:
        put_photos(s3, ("rocket.jpg", "coffee.png"))
        model_dir = d0_model_dir(Path(tmp))
        env = {"SAGEMAKER_MODEL_SERVER_TIMEOUT": str(args.timeout), "SMVISION_MAX_RECORDS": str(args.lines)}
        if args.server_path:
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [args.server_path, os.environ.get("PYTHONPATH")]))
        with smvision_serve(model_dir, env) as server:
            url = server.url
            body = "\n".join(f"{BUCKET}/rocket.jpg" for _ in range(args.lines))
            big = requests.post(url + "/invocations", data=body, headers={"Content-Type": "text/csv"}, timeout=args.timeout + 30)
            answered = time.monotonic()
            print(f"{args.lines}-line CSV answered {big.status_code} after the {args.timeout:g} s timeout", flush=True)

            def small_answered() -> bool:
                small = requests.post(url + "/invocations", json={"bucket": BUCKET, "key": "coffee.png"},
                                      timeout=args.timeout + 30)
                return small.status_code == 200

            try:
                wait_until(small_answered, args.give_up, "a one-image request to answer 200", interval=0)
            except TimeoutError:
                print(f"worker still busy {args.give_up:g} s after the 504: gave up")
                return
            print(f"first one-image request answered 200 {time.monotonic() - answered:.1f} s after the 504")
            stopped = re.search(r"has stopped, ([0-9.]+) s past its deadline", server.log())
            if stopped:
                print(f"server log: the abandoned request stopped {stopped.group(1)} s past its deadline")


if __name__ == "__main__":
    main()
