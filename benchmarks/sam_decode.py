"""SAM decode, one point at 1500x2250: the upstream ONNX recipe + RLE vs ours, in one run,
on ragged masks (random weights) and smooth ones side by side.

- upstream recipe + RLE: segment_anything's SamOnnxModel exported with the slicing fix,
  onnxruntime on 2 threads, four masks upsampled in the graph to 1024 and then to the
  original size, thresholded in numpy, then the three multimask masks encoded as COCO RLE
  by pycocotools (what a user of the recipe does to answer RLE); timed in a process of its
  own (--recipe-process same: in this one, where its spinning threads slow whatever runs
  next here, our in-process call included). Its stages: graph (+ threshold), rle.
- ours in-process: SamDecoder.decode (the sam-decode archive's .onnx) + RLE of the three
  multimask masks (encode_masks(result.runs, "rle")).
- ours over HTTP: `smvision serve` with the sam-decode archive, one JSON request with
  the embedding inline (base64 .npy), one point, mask_format rle; timed from send to the
  last byte of the answer.
- ours over HTTP, .npz: the same request as one application/x-npz body (numpy.savez of
  the float32 embedding and the prompts): no base64, no JSON to parse.
- ours over HTTP, .npz fp16: the same with the embedding as float16 (sam-encode's
  embedding_dtype float16): half the bytes to send; its masks are compared too.

The decoder is the same 4.06M parameters for every model type: vit_b's, random weights
from a fixed seed (each archive is built with the same seed as its recipe graph, so they
share weights). The embedding is a real photo (skimage coffee, 400x600, upscaled to
1500x2250) through the CI-sized encoder. Two decoders (--masks both, the default):
"ragged", random weights as they are, whose masks have an edge at nearly every low-res
sample (no trained SAM gives such masks, but they are the worst case for RLE); "smooth",
the same weights with each transposed convolution's 2x2 taps tied, so the masks follow
the photo's shapes in 4x4 blocks (rather more edges than a trained SAM's one-object
masks). The arithmetic is the same either way: only the work per mask edge differs. All
paths of both kinds alternate call by call (order rotating each round) so machine load
hits them alike; the masks of all paths are compared with the recipe's (IoU).

Per-stage medians follow: Server-Timing for HTTP (receive, input = JSON parse, fetch =
base64 + .npy, graph = onnxruntime, runs = mask runs, masks = RLE strings, output = JSON
answer), the same stages timed in-process, the recipe's graph and rle. --spinning both
adds an in-process decoder whose onnxruntime threads spin-wait (the session default)
beside ours (they sleep). Last, where the served graph's time goes by kind of op
(onnxruntime's profiler), and how much of 4x the recipe's time its matrix products and
the receiving alone already take.

--calibrate instead times the two ways mask runs are made (sparse_mask_runs,
dense_mask_runs) one mask at a time, from smooth to salt-and-pepper logits at several
image sizes, beside what takes_dense_path chooses: the measurements behind DENSE_EDGES.

    python benchmarks/sam_decode.py [--rounds 40] [--masks both|ragged|smooth] [--no-http] [--threads 2]
                                    [--spinning both] [--calibrate]
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import statistics
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

from devtools.local_s3 import skimage_photo
from smvision.deploy.server_process import smvision_serve as LocalServer

HEIGHT, WIDTH = 1500, 2250
POINT = [1125.0, 750.0]
SEED = 0


def p50_p95(seconds: list[float]) -> tuple[float, float]:
    """(p50, p95) in milliseconds (the project's one percentile, smvision.deploy.stats)."""
    from smvision.deploy.stats import percentile

    return percentile(seconds, 0.5) * 1000, percentile(seconds, 0.95) * 1000


def photo_embedding() -> np.ndarray:
    """(1, 256, 64, 64) float32: coffee.png at 1500x2250 through the CI-sized encoder."""
    import torch
    from PIL import Image
    from segment_anything import SamPredictor

    from smvision.models.sam.build import build_sam, sam_config

    pixels = np.asarray(Image.open(skimage_photo("coffee.png")).convert("RGB").resize((WIDTH, HEIGHT), Image.BILINEAR))
    torch.manual_seed(SEED)
    predictor = SamPredictor(build_sam(sam_config("vit_tiny_test")))
    predictor.set_image(pixels)
    return predictor.get_image_embedding().numpy()


def tie_upscaling_taps(sam):
    """Each ConvTranspose2d(k=2, s=2) of output_upscaling: all 2x2 taps = the first."""
    import torch

    with torch.no_grad():
        for layer in sam.mask_decoder.output_upscaling:
            if isinstance(layer, torch.nn.ConvTranspose2d):
                layer.weight[:] = layer.weight[:, :, :1, :1]
    return sam


def build(model_type: str, workdir: Path, tied_taps: bool) -> tuple[Path, Path]:
    """(the upstream graph .onnx, the unpacked sam-decode archive), same random weights."""
    import torch

    from smvision.archive.sam import build_sam_archive
    from smvision.archive.sam_onnx import export_sam_decoder
    from smvision.models.sam import build as sam_build

    workdir.mkdir(parents=True, exist_ok=True)
    plain_build = sam_build.build_sam

    def build_sam(config):
        sam = plain_build(config)
        return tie_upscaling_taps(sam) if tied_taps else sam

    torch.manual_seed(SEED)
    upstream = export_sam_decoder(build_sam(sam_build.sam_config(model_type)), workdir / "upstream.onnx", upsample=True)
    sam_build.build_sam = build_sam  # the archive builder builds (seed SEED) through it
    try:
        archive = build_sam_archive(workdir / "model.tar.gz", "sam-decode", model_type, seed=SEED)
    finally:
        sam_build.build_sam = plain_build
    model_dir = workdir / "model"
    with tarfile.open(archive) as tar:
        tar.extractall(model_dir, filter="data")
    return upstream, model_dir


def upstream_session(path: Path, threads: int):
    """The recipe's session: default options, `threads` intra-op threads."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def upstream_feed(embedding: np.ndarray) -> dict[str, np.ndarray]:
    """One point plus the (0, 0) / -1 padding point, coordinates resized to 1024."""
    from segment_anything.utils.transforms import ResizeLongestSide

    coords = ResizeLongestSide(1024).apply_coords(np.array([POINT, [0.0, 0.0]]), (HEIGHT, WIDTH))
    return {
        "image_embeddings": embedding,
        "point_coords": coords[None].astype(np.float32),
        "point_labels": np.array([[1.0, -1.0]], dtype=np.float32),
        "mask_input": np.zeros((1, 1, 256, 256), dtype=np.float32),
        "has_mask_input": np.zeros(1, dtype=np.float32),
        "orig_im_size": np.array([HEIGHT, WIDTH], dtype=np.float32),
    }


def recipe_worker(connection, path: str, threads: int, feed: dict[str, np.ndarray]) -> None:
    """In a process of its own: the recipe's call (session.run, threshold) and pycocotools
    RLE of its three multimask masks per message, answering (wall seconds, CPU seconds,
    {stage: seconds}[, the RLEs])."""
    from pycocotools import mask as mask_utils

    session = upstream_session(Path(path), threads)
    while (message := connection.recv()) is not None:
        cpu, started = time.process_time(), time.perf_counter()
        logits, _, _ = session.run(None, feed)
        masks = logits > 0.0
        graph = time.perf_counter()
        rles = mask_utils.encode(np.asfortranarray(masks[0, 1:].transpose(1, 2, 0)).view(np.uint8))
        ended = time.perf_counter()
        wall, used = ended - started, time.process_time() - cpu
        connection.send((wall, used, {"graph": graph - started, "rle": ended - graph}, rles if message == "masks" else None))


class RecipeProcess:
    """The upstream recipe timed in a child process (its onnxruntime threads spin after
    each call, as the recipe's default session does; in our process they would take the
    cores from the next in-process call)."""

    def __init__(self, path: Path, threads: int, feed: dict[str, np.ndarray]) -> None:
        import multiprocessing

        context = multiprocessing.get_context("spawn")
        self.connection, child = context.Pipe()
        self.process = context.Process(target=recipe_worker, args=(child, str(path), threads, feed), daemon=True)
        self.process.start()

    def run(self, stages: list[dict[str, float]] | None = None) -> tuple[float, float]:
        self.connection.send("run")
        wall, used, seconds, _ = self.connection.recv()
        if stages is not None:
            stages.append({k: v * 1000 for k, v in seconds.items()})
        return wall, used

    def masks(self) -> list[dict]:
        """The three multimask masks as pycocotools RLEs."""
        self.connection.send("masks")
        return self.connection.recv()[3]

    def stop(self) -> None:
        self.connection.send(None)
        self.process.join(10)


OP_KINDS = {
    "matrix products": {"MatMul", "Gemm", "FusedMatMul", "FusedGemm", "MatMulInteger", "DynamicQuantizeMatMul", "MatMulIntegerToFloat"},
    "norms, GELU, softmax": {"LayerNormalization", "SkipLayerNormalization", "Gelu", "Erf", "Softmax", "Relu"},
    "adds and scalings": {"Add", "Mul", "Div", "Sub", "Sqrt", "Pow", "Neg"},
    "layout (transpose, reshape)": {"Transpose", "Reshape", "Concat", "Gather", "Slice", "Expand", "Unsqueeze", "Squeeze", "Tile"},
}


def graph_breakdown(onnx_path: Path, feed: dict[str, np.ndarray], threads: int, runs: int = 20) -> dict[str, float]:
    """Median ms per run of the served graph's kernels, summed by kind of op (onnxruntime's
    profiler, the server's session options): where the graph's time goes."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.intra_op_num_threads = threads
    options.enable_profiling = True
    options.profile_file_prefix = str(onnx_path.parent / "profile")
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    for _ in range(3):
        session.run(None, feed)
    for _ in range(runs):
        session.run(None, feed)
    events = json.loads(Path(session.end_profiling()).read_text())
    per_run: dict[int, dict[str, float]] = {}
    run_index = 0  # a run's kernels come before its model_run event
    for event in events:
        if event.get("cat") == "Session" and event["name"] == "model_run":
            run_index += 1
        if event.get("cat") != "Node" or not event["name"].endswith("_kernel_time"):
            continue
        op = event["args"]["op_name"]
        kind = next((name for name, ops in OP_KINDS.items() if op in ops), "other")
        row = per_run.setdefault(run_index, {})
        row[kind] = row.get(kind, 0.0) + event["dur"] / 1000
    rows = [row for index, row in per_run.items() if index >= 3]
    kinds = list(OP_KINDS) + ["other"]
    return {kind: statistics.median(row.get(kind, 0.0) for row in rows) for kind in kinds}


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


def timed(call: Callable[[], object], cpu: Callable[[], float] = time.process_time) -> Callable[[], tuple[float, float]]:
    """call -> (wall seconds, CPU seconds of `cpu`'s process(es)) per call."""

    def run() -> tuple[float, float]:
        cpu_before, started = cpu(), time.perf_counter()
        call()
        return time.perf_counter() - started, cpu() - cpu_before

    return run


def process_tree_cpu(pid: int) -> float:
    """User + system CPU seconds of a process and its descendants (/proc; 10 ms ticks)."""
    tick = os.sysconf("SC_CLK_TCK")
    total, pending = 0.0, [pid]
    while pending:
        current = pending.pop()
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
            for task in Path(f"/proc/{current}/task").iterdir():
                pending.extend(int(c) for c in (task / "children").read_text().split())
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total


KINDS = {"ragged": False, "smooth": True}  # mask kind -> tie the upscaling taps (see the docstring)


def calibrate(threads: int) -> int:
    """sparse_mask_runs vs dense_mask_runs, one mask at a time, alternating, and which way
    takes_dense_path sends it: smooth to salt-and-pepper logits at several sizes."""
    import cv2

    from smvision.models.sam.decoder import dense_mask_runs, input_size, sparse_mask_runs, takes_dense_path

    cv2.setNumThreads(threads)
    rng = np.random.default_rng(SEED)
    noise = rng.normal(size=(256, 256)).astype(np.float32)
    logits = {f"blur {sigma:g}": (cv2.GaussianBlur(noise, (0, 0), sigma) if sigma else noise) * 30
              for sigma in (0, 0.7, 1, 1.5, 2, 3, 5, 10)}
    for block in (4, 8):  # what tied taps give: blocks of the 64x64 tokens
        logits[f"{block}x{block} blocks"] = np.kron(rng.normal(size=(256 // block,) * 2), np.ones((block, block))).astype(np.float32)
    print(f"{'size':>11s} {'logits':>12s} {'sparse ms':>9s} {'dense ms':>9s} {'chosen':>7s} {'right':>5s}")
    wrong = 0
    for original_size in ((480, 640), (1500, 2250), (2250, 1500), (3000, 4500)):
        size = input_size(original_size)
        for name, low in logits.items():
            low = low[None]
            times: dict[str, list[float]] = {"sparse": [], "dense": []}
            for _ in range(9):
                for way, run in (("sparse", sparse_mask_runs), ("dense", dense_mask_runs)):
                    started = time.perf_counter()
                    run(low, size, original_size)
                    times[way].append(time.perf_counter() - started)
            sparse, dense = (statistics.median(times[w]) * 1000 for w in ("sparse", "dense"))
            chosen = "dense" if takes_dense_path(low, size, original_size)[0] else "sparse"
            right = chosen == ("dense" if dense < sparse else "sparse") or abs(sparse - dense) < 0.15 * min(sparse, dense)
            wrong += not right
            print(f"{original_size[0]:5d}x{original_size[1]:<5d} {name:>12s} {sparse:9.2f} {dense:9.2f} {chosen:>7s} "
                  f"{'yes' if right else 'NO':>5s}")
    print(f"(right: the faster way, or within 15% of it; {wrong} wrong; load average {os.getloadavg()[0]:.1f})")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--model-type", default="vit_b")
    parser.add_argument("--no-http", action="store_true", help="skip the server (in-process only)")
    parser.add_argument("--masks", choices=("both", *KINDS), default="both", help="see the module docstring")
    parser.add_argument("--recipe-process", choices=("own", "same"), default="own",
                        help="own: the recipe runs in a process of its own, so its spinning threads do not slow our in-process calls")
    parser.add_argument("--spinning", choices=("off", "both"), default="off", help="both: also time a decoder whose threads spin")
    parser.add_argument("--calibrate", action="store_true", help="time the two ways of making mask runs (see the docstring)")
    args = parser.parse_args()
    if args.calibrate:
        return calibrate(args.threads)

    from pycocotools import mask as mask_utils

    from smvision.archive.sam import DECODER_FILE
    from smvision.inflight import request_scope, stage
    from smvision.models.sam.decoder import SamDecoder
    from smvision.models.sam.masks import encode_masks
    from smvision.kinds.sam_prompts import parse_prompts

    kinds = list(KINDS) if args.masks == "both" else [args.masks]
    scratch = tempfile.TemporaryDirectory(prefix="sam-decode-bench-")
    workdir = Path(scratch.name)
    embedding = photo_embedding()
    feed = upstream_feed(embedding)
    params = {"points": [POINT], "labels": [1], "mask_format": "rle"}
    prompts = parse_prompts(params, (HEIGHT, WIDTH), "bench")
    stages: dict[str, list[dict[str, float]]] = {}
    paths: dict[str, Callable[[], tuple[float, float]]] = {}
    answers: dict[str, list[dict]] = {}
    references: dict[str, np.ndarray] = {}
    recipes, servers, onnx_paths = [], [], {}

    def in_process(name: str, chosen) -> Callable[[], list]:
        def run() -> list:
            with request_scope(None) as flight:
                result = chosen.decode(embedding, (HEIGHT, WIDTH), prompts)
                with stage("masks"):
                    masks = encode_masks(result.runs, "rle")
            stages.setdefault(name, []).append({k: v * 1000 for k, v in flight.stages.items()})
            return masks

        return run

    try:
        for kind in kinds:
            print(f"building the {kind} {args.model_type} decoder (random weights, seed {SEED}) ...", flush=True)
            upstream_path, model_dir = build(args.model_type, workdir / kind, KINDS[kind])
            onnx_paths[kind] = model_dir / DECODER_FILE
            recipe_name = f"{kind}: upstream recipe + RLE"
            if args.recipe_process == "own":
                recipe = RecipeProcess(upstream_path, args.threads, feed)
                recipes.append(recipe)
                paths[recipe_name] = lambda recipe=recipe, name=recipe_name: recipe.run(stages.setdefault(name, []))
                reference = recipe.masks()
            else:
                session = upstream_session(upstream_path, args.threads)

                def run_recipe(session=session, name=recipe_name) -> list:
                    started = time.perf_counter()
                    masks = session.run(None, feed)[0] > 0.0
                    graph = time.perf_counter()
                    rles = mask_utils.encode(np.asfortranarray(masks[0, 1:].transpose(1, 2, 0)).view(np.uint8))
                    stages.setdefault(name, []).append({"graph": (graph - started) * 1000, "rle": (time.perf_counter() - graph) * 1000})
                    return rles

                paths[recipe_name] = timed(run_recipe)
                reference = run_recipe()
            references[kind] = mask_utils.decode(reference).transpose(2, 0, 1).astype(bool)
            decoders = {f"{kind}: ours in-process": SamDecoder(onnx_paths[kind], threads=args.threads)}
            if args.spinning == "both":
                decoders[f"{kind}: ours in-process, spinning"] = SamDecoder(onnx_paths[kind], threads=args.threads, spinning=True)
            for name, decoder in decoders.items():
                run = in_process(name, decoder)
                paths[name] = timed(run)
                answers[name] = run()
            if args.no_http:
                continue
            import requests

            buffer = io.BytesIO()
            np.save(buffer, embedding)
            body = json.dumps({"image_embedding": base64.b64encode(buffer.getvalue()).decode(), "original_size": [HEIGHT, WIDTH], **params}).encode()
            env = {"SAGEMAKER_MODEL_SERVER_WORKERS": "1", "SMVISION_THREADS": str(args.threads)}
            server = LocalServer(model_dir, env=env, log_path=workdir / f"serve-{kind}.log").__enter__()
            servers.append(server)
            http = requests.Session()
            npz, half = io.BytesIO(), io.BytesIO()  # half: what a client gets from sam-encode with embedding_dtype float16
            for out, array in ((npz, embedding), (half, embedding.astype(np.float16))):
                np.savez(out, image_embedding=array, original_size=np.array([HEIGHT, WIDTH]), **{k: np.array(v) for k, v in params.items()})
            bodies = {f"{kind}: ours over HTTP": (body, "application/json"),
                      f"{kind}: ours over HTTP, .npz": (npz.getvalue(), "application/x-npz"),
                      f"{kind}: ours over HTTP, .npz fp16": (half.getvalue(), "application/x-npz")}

            def poster(name: str, url: str = server.url + "/invocations", http=http) -> Callable[[], bytes]:
                data, content_type = bodies[name]

                def post() -> bytes:
                    response = http.post(url, data=data, headers={"Content-Type": content_type, "Accept": "application/json"})
                    response.raise_for_status()
                    timing = dict(part.strip().split(";dur=") for part in response.headers["server-timing"].split(","))
                    stages.setdefault(name, []).append({k: float(v) for k, v in timing.items()})
                    return response.content

                return post

            for name in bodies:
                post = poster(name)
                paths[name] = timed(post, lambda pid=server.process.pid: process_tree_cpu(pid))
                answer = json.loads(post())
                answers[name] = (answer[0] if isinstance(answer, list) else answer)["masks"]

        for name, masks in answers.items():
            reference = references[name.split(":")[0]]
            decoded = mask_utils.decode(masks).transpose(2, 0, 1).astype(bool)
            ious = [iou(a, b) for a, b in zip(decoded, reference)]
            print(f"{name}: IoU with the recipe's masks {', '.join(f'{v:.5f}' for v in ious)} "
                  f"(mask areas {', '.join(f'{m.mean():.1%}' for m in reference)}, {sum(len(m['counts']) for m in masks)} RLE chars)")
        for run in paths.values():  # warm up
            run()
        stages.clear()
        times: dict[str, list[float]] = {name: [] for name in paths}
        cpu: dict[str, list[float]] = {name: [] for name in paths}
        names = list(paths)
        for i in range(args.rounds):
            for name in names[i % len(names):] + names[: i % len(names)]:
                wall, used = paths[name]()
                times[name].append(wall)
                cpu[name].append(used)
        graph_kind = "smooth" if "smooth" in kinds else kinds[0]
        decoder = SamDecoder(onnx_paths[graph_kind], threads=args.threads)
        breakdown = graph_breakdown(onnx_paths[graph_kind], decoder.feed(embedding, (HEIGHT, WIDTH), prompts), args.threads)
    finally:
        for server in servers:
            server.stop()
        for recipe in recipes:
            recipe.stop()
        scratch.cleanup()

    print(f"\n{args.rounds} rounds, {HEIGHT}x{WIDTH}, one point, {' and '.join(kinds)} masks, {args.threads} threads, "
          f"os.cpu_count()={os.cpu_count()}, load average {os.getloadavg()[0]:.1f}")
    for kind in kinds:
        base = f"{kind}: upstream recipe + RLE"
        base_p50, base_p95 = p50_p95(times[base])
        base_cpu = statistics.fmean(cpu[base]) * 1000
        for name in (n for n in names if n.startswith(f"{kind}:")):
            p50, p95 = p50_p95(times[name])
            mean_cpu = statistics.fmean(cpu[name]) * 1000
            ratio = "" if name == base else f"   {base_p50 / p50:.2f}x faster at p50, {base_p95 / p95:.2f}x at p95, {base_cpu / mean_cpu:.2f}x less CPU"
            print(f"{name:36s} p50 {p50:7.1f} ms   p95 {p95:7.1f} ms   CPU {mean_cpu:6.1f} ms/call{ratio}")
    print("(CPU: this process's time for in-process calls, the recipe's process's for the recipe; the server's process tree, 10 ms ticks, for HTTP)")
    print("\nmedian ms per stage (Server-Timing over HTTP; the same stages in-process; the recipe's graph + threshold and pycocotools RLE):")
    for name, rows in stages.items():
        keys = list(dict.fromkeys(k for row in rows for k in row))
        medians = {k: statistics.median(row.get(k, 0.0) for row in rows) for k in keys}
        print(f"  {name:36s} " + "  ".join(f"{k} {v:.1f}" for k, v in medians.items()))
    print(f"\nthe served graph's kernels ({graph_kind}), median ms per run (onnxruntime's profiler, same session options):")
    print("  " + "  ".join(f"{kind} {ms:.1f}" for kind, ms in breakdown.items()) + f"  (sum {sum(breakdown.values()):.1f})")
    npz_name = f"{graph_kind}: ours over HTTP, .npz"
    if npz_name in stages:
        target = p50_p95(times[f"{graph_kind}: upstream recipe + RLE"])[0] / 4
        receive = statistics.median(row["receive"] for row in stages[npz_name])
        floor = breakdown["matrix products"] + receive
        print(f"4x the recipe is {target:.1f} ms end to end; the graph's matrix products alone ({breakdown['matrix products']:.1f} ms) "
              f"and receiving the 4 MB embedding ({receive:.1f} ms) take {floor:.1f} ms of it")
    return 0


if __name__ == "__main__":
    sys.exit(main())
