"""Local batch transform: SingleRecord vs MultiRecord, concurrency 1 vs 2, one D0 server.

Same server, same inputs (JSON lines of photos in a local S3), the strategies taking
turns round by round so that machine load hits them alike. Prints records/s for each and
the ratios to SingleRecord at concurrency 1.

    python benchmarks/transform_local.py [--rounds 3] [--records 8]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from devtools.local_s3 import LocalS3, skimage_photo
from smvision.archive.build import extract_archive
from smvision.archive.efficientdet import build_efficientdet_archive
from smvision.deploy.local_transform import TransformOptions, run_local_transform
from smvision.deploy.server_process import smvision_serve
from smvision.deploy.stats import percentile

BUCKET = "bench-transform"
PHOTOS = ("astronaut.png", "coffee.png", "rocket.jpg", "chelsea.png")
VARIANTS = (("SingleRecord", 1), ("MultiRecord", 1), ("SingleRecord", 2), ("MultiRecord", 2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--records", type=int, default=8, help="records per round (two input files)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp, LocalS3() as s3:
        s3.put(BUCKET, {f"photos/{name}": skimage_photo(name).read_bytes() for name in PHOTOS})
        lines = [json.dumps({"bucket": BUCKET, "key": f"photos/{PHOTOS[i % len(PHOTOS)]}"}) for i in range(args.records)]
        half = len(lines) // 2
        s3.put(BUCKET, {"in/part-1.jsonl": ("\n".join(lines[:half]) + "\n").encode(),
                        "in/part-2.jsonl": ("\n".join(lines[half:]) + "\n").encode()})
        archive = build_efficientdet_archive(Path(tmp) / "model.tar.gz", compound_coef=0)
        model_dir = extract_archive(archive, Path(tmp) / "model")
        env = TransformOptions(max_concurrent_transforms=2, max_payload_mb=6).server_env()
        seconds: dict[tuple[str, int], list[float]] = {variant: [] for variant in VARIANTS}
        with smvision_serve(model_dir, env=env) as server:
            for round_index in range(args.rounds):
                order = VARIANTS if round_index % 2 == 0 else tuple(reversed(VARIANTS))
                for strategy, concurrency in order:
                    options = TransformOptions(content_type="application/jsonlines", accept="application/jsonlines",
                                               split_type="Line", batch_strategy=strategy, max_payload_mb=6,
                                               max_concurrent_transforms=concurrency, assemble_with="Line")
                    started = time.perf_counter()
                    report = run_local_transform(server.url, f"s3://{BUCKET}/in/",
                                                 f"s3://{BUCKET}/out/{strategy}-{concurrency}-{round_index}",
                                                 options, show_progress=False)
                    seconds[(strategy, concurrency)].append(time.perf_counter() - started)
                    assert not report.failures, report.failures
    base = percentile(seconds[VARIANTS[0]], 0.5)
    print(f"{args.records} records per round, {args.rounds} rounds, median round time")
    print(f"{'strategy':<14}{'concurrency':>12}{'records/s':>12}{'vs Single/1':>13}")
    for strategy, concurrency in VARIANTS:
        median = percentile(seconds[(strategy, concurrency)], 0.5)
        print(f"{strategy:<14}{concurrency:>12}{args.records / median:>12.2f}{base / median:>13.2f}")


if __name__ == "__main__":
    main()
