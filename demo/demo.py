"""The smvision demo: EfficientDet D0 and Segment Anything served locally, as on SageMaker.

Starts a local S3 (moto server) holding real photos, builds a D0 archive, serves it with
`smvision serve` on port 8080, sends the seed endpoint's four test requests, draws the
detections on a photo; then builds sam-encode and sam-decode archives, serves them on the
next two ports, encodes a photo, decodes a point and a box on its embedding, draws the
masks beside the detections, and stops everything it started.

    python demo/demo.py [--weights efficientdet-d0.pth] [--sam-checkpoint sam_vit_b_01ec64.pth
                         --sam-model-type vit_b] [--port 8080] [--out demo-output]
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import requests

from devtools.local_s3 import BIN, LocalS3, skimage_photo
from smvision.deploy.server_process import ServerError, ServerProcess, smvision_serve

BUCKET = "smvision-demo"
PHOTOS = ("astronaut.png", "coffee.png", "rocket.jpg")
#: as `smvision serve` binds by default (smvision_serve would keep it to 127.0.0.1)
ALL_INTERFACES = {"SMVISION_BIND_HOST": "0.0.0.0"}


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
    parser.add_argument("--sam-checkpoint", help="an official SAM checkpoint (default: the CI-sized SAM, random weights)")
    parser.add_argument("--sam-model-type", default="vit_tiny_test", help="vit_b | vit_l | vit_h with --sam-checkpoint")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--out", default="demo-output")
    args = parser.parse_args()
    out = Path(args.out).resolve()
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    for port in (args.port, args.port + 1, args.port + 2):
        if not port_free(port):
            sys.exit(f"port {port} is in use; pass --port (the demo uses it and the next two)")
    # 1. A local S3 holding real photos (moto server), reached through boto3 as AWS would be.
    try:
        with LocalS3(out / "s3.log") as s3:
            photos = {name: skimage_photo(name).read_bytes() for name in PHOTOS}
            s3.put(BUCKET, {f"images/{name}": data for name, data in photos.items()})
            print(f"local S3 at {s3.url}: s3://{BUCKET}/images/{{{','.join(PHOTOS)}}}")
            run_demo(args, out, photos)
            run_sam_demo(args, out, photos)
    except ServerError as exc:  # a server exited or never became ready: its log's tail says why
        sys.exit(f"demo: {exc}")


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
    server = smvision_serve(model_dir, ALL_INTERFACES, port=args.port, log_path=out / "serve.log", ready_timeout_s=180)
    try:
        server.start_and_wait()
        print(f"serve ready on {server.url} after {server.ready_after:.1f} s (log: {out / 'serve.log'})")
        send_requests(server.url, out, photos, args.weights)
    finally:
        print("stopping the EfficientDet server")
        server.stop()


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


def start_server(kind: str, build_args: list[str], out: Path, port: int) -> ServerProcess:
    """Build an archive of kind, extract it, and start `smvision serve` on it."""
    archive = out / f"{kind}.tar.gz"
    subprocess.run([str(BIN / "smvision"), "archive", "build", kind, *build_args, "--output", str(archive)], check=True)
    model_dir = out / kind
    model_dir.mkdir()
    subprocess.run(["tar", "-xzf", str(archive), "-C", str(model_dir)], check=True)
    server = smvision_serve(model_dir, ALL_INTERFACES, port=port, log_path=out / f"serve-{kind}.log",
                            ready_timeout_s=180)
    return server.start()


def run_sam_demo(args: argparse.Namespace, out: Path, photos: dict[str, bytes]) -> None:
    # 6. Segment Anything, split as on SageMaker: sam-encode (torch; a GPU endpoint in
    #    production) makes the embedding once; sam-decode (ONNX Runtime; CPU) answers prompts.
    build = ["--model-type", args.sam_model_type] + (["--checkpoint", args.sam_checkpoint] if args.sam_checkpoint else [])
    servers: dict[str, ServerProcess] = {}
    try:
        for offset, kind in ((1, "sam-encode"), (2, "sam-decode")):
            servers[kind] = start_server(kind, build, out, args.port + offset)
        for server in servers.values():
            server.wait_ready()
        send_sam_requests(servers["sam-encode"].url, servers["sam-decode"].url, out, photos, args.sam_checkpoint)
    finally:
        for server in servers.values():
            server.stop()


def send_sam_requests(encode_url: str, decode_url: str, out: Path, photos: dict[str, bytes], checkpoint: str | None) -> None:
    body = {"bucket": BUCKET, "key": "images/astronaut.png", "embedding_dtype": "float16"}
    response = requests.post(encode_url + "/invocations", json=body)
    print(f"\n=== 6. SAM encode: {json.dumps(body)}\n-> HTTP {response.status_code} {response.headers.get('content-type')}")
    response.raise_for_status()
    encoded = response.json()
    print(f"   embedding: {len(encoded['embedding']):,} base64 characters (float16 .npy), "
          f"original_size {encoded['original_size']}, input_size {encoded['input_size']}")
    height, width = encoded["original_size"]
    prompts = [
        {"points": [[width * 0.5, height * 0.35]], "labels": [1], "multimask_output": False},
        {"box": [width * 0.25, height * 0.1, width * 0.8, height * 0.95], "multimask_output": False},
    ]
    records = [{"image_embedding": encoded["embedding"], "original_size": encoded["original_size"], **p} for p in prompts]
    response = requests.post(decode_url + "/invocations", json=records)
    print(f"\n=== 7. SAM decode: a point and a box on that embedding (RLE masks)\n-> HTTP {response.status_code}")
    response.raise_for_status()
    answers = response.json()
    for prompt, answer in zip(prompts, answers):
        shown = {k: v for k, v in prompt.items() if k != "multimask_output"}
        print(f"   {json.dumps(shown)}: {len(answer['masks'])} mask, score {answer['scores'][0]:.3f}, "
              f"RLE of {len(answer['masks'][0]['counts'])} characters")
    picture = out / "sam-masks.png"
    draw_masks(photos["astronaut.png"], prompts, answers, picture)
    print(f"\nmasks drawn on astronaut.png -> {picture}")
    if not checkpoint:
        print("NOTE: the SAM archives hold the CI-sized SAM with RANDOM weights, so these masks are noise. "
              "Pass --sam-checkpoint sam_vit_b_01ec64.pth --sam-model-type vit_b for real masks.")


def draw_masks(photo: bytes, prompts: list[dict], answers: list[dict], output: Path) -> None:
    import numpy as np
    from PIL import Image, ImageDraw
    from pycocotools import mask as mask_utils

    image = np.asarray(Image.open(io.BytesIO(photo)).convert("RGB")).astype(np.float32)
    colours = ((255, 60, 60), (60, 140, 255))
    for answer, colour in zip(answers, colours):
        mask = mask_utils.decode(answer["masks"][0]).astype(bool)
        image[mask] = 0.5 * image[mask] + 0.5 * np.array(colour, dtype=np.float32)
    picture = Image.fromarray(image.astype(np.uint8))
    pen = ImageDraw.Draw(picture)
    for prompt, colour in zip(prompts, colours):
        for x, y in prompt.get("points", []):
            pen.ellipse([x - 6, y - 6, x + 6, y + 6], fill=colour, outline=(255, 255, 255), width=2)
        if "box" in prompt:
            pen.rectangle(prompt["box"], outline=colour, width=3)
    picture.save(output)


if __name__ == "__main__":
    main()
