"""The smvision demo: EfficientDet D0 served locally, exactly as on a SageMaker endpoint.

Starts a local S3 (moto server) holding real photos, builds a D0 archive, serves it with
`smvision serve` on port 8080, sends the seed endpoint's four test requests, draws the
detections on a photo, and stops everything it started.

    python demo/demo.py [--weights efficientdet-d0.pth] [--port 8080] [--out demo-output]
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

from local_s3 import BIN, LocalS3, skimage_photo, stop_process

BUCKET = "smvision-demo"
PHOTOS = ("astronaut.png", "coffee.png", "rocket.jpg")

def wait_ok(url: str, process: subprocess.Popen, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit(f"{what} exited with {process.returncode}; see its log")
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.2)
    sys.exit(f"{what} was not ready after {seconds} s")


def port_free(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def show(title: str, command: str, response: requests.Response) -> object:
    print(f"\n=== {title}\n$ {command}\n-> HTTP {response.status_code} {response.headers.get('content-type')}")
    body = response.json()
    for result in body if isinstance(body, list) else [body]:
        if "detections" in result:
            top = sorted(result["detections"], key=lambda d: -d["score"])[:3]
            print(f"   {result['source']} {result['image_size']}: {len(result['detections'])} detections" + ("; top 3:" if top else ""))
            for d in top:
                print(f"     {d['class']:<14} {d['score']:.3f} {d['bbox']}")
        else:
            print("  ", json.dumps(result))
    return body


def draw(photo: bytes, result: dict, output: Path, limit: int = 15) -> None:
    from PIL import Image, ImageDraw

    image = Image.open(io.BytesIO(photo)).convert("RGB")
    pen = ImageDraw.Draw(image)
    for d in sorted(result["detections"], key=lambda d: -d["score"])[:limit]:
        pen.rectangle(d["bbox"], outline=(255, 40, 40), width=3)
        pen.text((d["bbox"][0] + 4, d["bbox"][1] + 2), f"{d['class']} {d['score']:.2f}", fill=(255, 255, 0))
    image.save(output)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", help="a zylo117 efficientdet-d0.pth (default: random weights)")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--out", default="demo-output")
    args = parser.parse_args()
    out = Path(args.out).resolve()
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    if not port_free(args.port):
        sys.exit(f"port {args.port} is in use; pass --port")
    # 1. A local S3 holding real photos (moto server), reached through boto3 as AWS would be.
    with LocalS3(out / "s3.log") as s3:
        photos = {name: skimage_photo(name).read_bytes() for name in PHOTOS}
        s3.put(BUCKET, {f"images/{name}": data for name, data in photos.items()})
        print(f"local S3 at {s3.url}: s3://{BUCKET}/images/{{{','.join(PHOTOS)}}}")
        run_demo(args, out, photos)


def run_demo(args: argparse.Namespace, out: Path, photos: dict[str, bytes]) -> None:
    # 2. Build a D0 archive and extract it, as SageMaker does into /opt/ml/model.
    archive = out / "model.tar.gz"
    build = [str(BIN / "smvision"), "archive", "build", "efficientdet", "--compound-coef", "0", "--output", str(archive)]
    if args.weights:
        build += ["--weights", args.weights]
    subprocess.run(build, check=True)
    model_dir = out / "model"
    model_dir.mkdir()
    subprocess.run(["tar", "-xzf", str(archive), "-C", str(model_dir)], check=True)

    # 3. Serve it on the SageMaker hosting contract.
    started = time.monotonic()
    command = [str(BIN / "smvision"), "serve", "--model-dir", str(model_dir), "--port", str(args.port)]
    with open(out / "serve.log", "wb") as log:
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{args.port}"
        wait_ok(url + "/ping", server, 180, "smvision serve")
        print(f"serve ready on {url} after {time.monotonic() - started:.1f} s (log: {out / 'serve.log'})")
        send_requests(url, out, photos, args.weights)
    finally:
        print("stopping the server and the local S3")
        stop_process(server)


def send_requests(url: str, out: Path, photos: dict[str, bytes], weights: str | None) -> None:
    # 4. The seed endpoint's four test requests.
    invocations = url + "/invocations"
    csv_body = "\n".join(f"{BUCKET}/images/{name}" for name in PHOTOS)
    response = requests.post(invocations, data=csv_body, headers={"Content-Type": "text/csv"})
    show("1. CSV: one bucket/key per line", f"curl -X POST {invocations} -H 'Content-Type: text/csv' --data-binary @keys.csv", response)
    response.raise_for_status()

    single = {"bucket": BUCKET, "key": "images/astronaut.png"}
    response = requests.post(invocations, json=single)
    show("2. JSON S3 reference", f"curl -X POST {invocations} -H 'Content-Type: application/json' -d '{json.dumps(single)}'", response)
    response.raise_for_status()

    # Random weights score every anchor at about 0.01 (zylo117's initial class prior), so
    # with them the custom threshold goes below that to show boxes coming through.
    custom = {**single, "pred_threshold": 0.5 if weights else 0.005, "iou_threshold": 0.3}
    response = requests.post(invocations, json=custom)
    drawn = show("3. custom thresholds", f"curl ... -d '{json.dumps(custom)}'", response)
    response.raise_for_status()

    invalid = {**single, "pred_threshold": 10}
    response = requests.post(invocations, json=invalid)
    show("4. invalid threshold -> 400", f"curl ... -d '{json.dumps(invalid)}'", response)
    if response.status_code != 400:
        sys.exit(f"expected 400 for an invalid threshold, got {response.status_code}")

    # 5. Draw the detections of request 3 on the photo.
    picture = out / "detections.png"
    draw(photos["astronaut.png"], drawn, picture)
    print(f"\ndetections drawn on astronaut.png -> {picture}")
    if not weights:
        print("NOTE: the archive has RANDOMLY INITIALISED weights, so these boxes are noise. "
              "Pass --weights efficientdet-d0.pth (zylo117) for real detections.")


if __name__ == "__main__":
    main()
