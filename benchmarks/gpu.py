"""The GPU check: start-up decision on the real driver, SAM encode, EfficientDet, memory.

What `benchmarks/gpu.sh` runs (one command, a few minutes on one GPU; every section is
written to the JSON as soon as it is measured, and a section that would overrun --budget-s
is skipped and listed as such):

1. start-up: the decision `serve` makes on this host (container/gpu.py: the driver from
   nvidia-smi or /proc/driver/nvidia/version, the CUDA compat package, on or off, the CUDA
   probe), and `serve` itself started on a stub model: its GPU log lines, or its refusal.
2. SAM's image encoder (smvision.models.sam.encoder.SamEncoder, as sam-encode serves it, with
   random weights: speed does not depend on them) for vit_b and vit_h: ms per image at batch
   1 and batched (--sam-batch, 8), in fp32, bf16 and fp16, with segment_anything's own
   attention ("eager") and with the attention as one torch scaled_dot_product_attention call
   with the relative-position bias as its mask ("sdpa", patched in here only, to decide
   whether serving should adopt it); the embedding's cosine to fp32 eager; peak GPU memory.
3. EfficientDet D0, D4, D7 (EfficientDetector, as the torch runtime serves it, with
   trained-like weights: devtools.weights.trained_like_efficientdet) on four photos:
   images/s through detect() at batch 1 and 8 in fp32 and with USE_FLOAT16, peak memory;
   and float16's fidelity to fp32 on the same inputs: the largest class-score and
   box-regression differences, and how many fp32 detections (the 50 best anchors' score as
   threshold) float16 finds again with the same class within 1 pixel.
4. torch.compile of SAM vit_b bf16 at batch 1, if time is left: compile seconds, ms per
   image against eager, and whether it pays (at least 10% faster).

    python benchmarks/gpu.py [--out DIR] [--readme README.md] [--budget-s 420]
                             [--sam-models vit_b,vit_h] [--coefs 0,4,7] [--rounds 5] [--sam-batch 8]
                             [--no-compile] [--smoke] [--device cuda|cpu]

--smoke: a CPU-sized run of every code path (vit_tiny_test, D0, batch 1 and 2, one round,
fp32; float16's fidelity then compares fp32 with itself), for checking the script here.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
import types
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parent.parent
README_START = "<!-- gpu-benchmark:start -->"
README_END = "<!-- gpu-benchmark:end -->"
PHOTO_NAMES = ("astronaut.png", "coffee.png", "rocket.jpg", "chelsea.png")
GIB = 1 << 30


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line; usage errors exit 2 before anything is imported or measured."""
    parser = argparse.ArgumentParser(prog="benchmarks/gpu.sh", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results",
                        help="folder for gpu-<UTC stamp>.json and .md (default benchmarks/results)")
    parser.add_argument("--readme", type=Path, default=None,
                        help="replace the table between the gpu-benchmark markers of this README")
    parser.add_argument("--budget-s", type=float, default=420.0, help="seconds for all measurements (default 420)")
    parser.add_argument("--sam-models", default=None, help="SAM model types (default vit_b,vit_h)")
    parser.add_argument("--coefs", default=None, help="EfficientDet coefficients (default 0,4,7)")
    parser.add_argument("--rounds", type=int, default=None, help="timed calls per configuration (default 5)")
    parser.add_argument("--sam-batch", type=int, default=None, help="images per batched SAM call (default 8)")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile measurement")
    parser.add_argument("--smoke", action="store_true", help="a small CPU run of every code path")
    parser.add_argument("--device", choices=("cuda", "cpu"), default=None,
                        help="default: cuda, or cpu with --smoke")
    args = parser.parse_args(argv)
    smoke = args.smoke
    args.sam_models = _names(parser, args.sam_models or ("vit_tiny_test" if smoke else "vit_b,vit_h"), "--sam-models")
    args.coefs = [int(c) for c in _names(parser, args.coefs or ("0" if smoke else "0,4,7"), "--coefs", r"[0-8]")]
    args.rounds = (1 if smoke else 5) if args.rounds is None else args.rounds
    args.sam_batch = (2 if smoke else 8) if args.sam_batch is None else args.sam_batch
    args.det_batches = (1, 2) if smoke else (1, 8)
    args.device = args.device or ("cpu" if smoke else "cuda")
    if args.rounds < 1 or args.sam_batch < 1 or args.budget_s <= 0:
        parser.error("--rounds and --sam-batch must be at least 1, --budget-s positive")
    return args


def _names(parser: argparse.ArgumentParser, raw: str, option: str, pattern: str = r"[a-z0-9_]+") -> list[str]:
    names = [n.strip() for n in raw.split(",") if n.strip()]
    bad = [n for n in names if not re.fullmatch(pattern, n)]
    if not names or bad:
        parser.error(f"{option}: a comma-separated list, got {raw!r}")
    return names


class Budget:
    """Seconds left for measuring; sections that would not fit are skipped and recorded."""

    def __init__(self, seconds: float) -> None:
        self.deadline = time.monotonic() + seconds

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def allows(self, estimate_s: float) -> bool:
        return self.left() >= estimate_s


class Report:
    """The results, written to JSON (and Markdown) after every section."""

    def __init__(self, out: Path, readme: Path | None, args: argparse.Namespace) -> None:
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        out.mkdir(parents=True, exist_ok=True)
        self.json_path, self.md_path, self.readme = out / f"gpu-{stamp}.json", out / f"gpu-{stamp}.md", readme
        self.data: dict[str, Any] = {
            "when": stamp, "smoke": args.smoke, "device": args.device, "rounds": args.rounds,
            "host": {}, "startup": {}, "sam": [], "sam_compile": None, "efficientdet": [],
            "efficientdet_fidelity": [], "skipped": [], "errors": [],
        }

    def save(self) -> None:
        self.json_path.write_text(json.dumps(self.data, indent=2) + "\n")
        table = markdown(self.data)
        self.md_path.write_text(table)
        if self.readme is not None:
            update_readme(self.readme, table)

    def skip(self, what: str, why: str) -> None:
        print(f"skipped {what}: {why}", flush=True)
        self.data["skipped"].append({"what": what, "why": why})


# --- 1. start-up -------------------------------------------------------------------------


STUB_ENTRY = "def model_fn(model_dir):\n    return None\n\ndef transform_fn(model, body, content_type, accept):\n    return body, content_type\n"


def startup(report: Report) -> None:
    """The decision on this host, the CUDA probe, and `serve`'s own start on a stub model."""
    from smvision.container import gpu
    from smvision.deploy.server_process import ServerProcess, free_port

    settings = gpu.GpuSettings.from_env(os.environ)
    startup_steps = gpu.Startup()
    decision = startup_steps.decision(settings)
    probe = gpu.probe_cuda(gpu_env(decision))
    result: dict[str, Any] = {
        "driver": gpu.format_version(decision.host.version), "driver_source": decision.host.source,
        "gpus": list(decision.host.gpus), "compat_dir": decision.compat_dir,
        "compat_driver": gpu.format_version(decision.compat_version) if decision.compat_version else None,
        "compat": decision.enable, "decision": decision.log_line(),
        "probe": {"ok": probe.ok, "torch": probe.torch, "cuda_runtime": probe.cuda_runtime,
                  "driver_api": probe.driver_api, "devices": list(probe.devices), "error": probe.error},
    }
    with tempfile.TemporaryDirectory(prefix="gpu-bench-") as tmp:
        model = Path(tmp) / "model"
        (model / "code").mkdir(parents=True)
        (model / "code" / "inference.py").write_text(STUB_ENTRY)
        port = free_port()
        log = Path(tmp) / "serve.log"
        server = ServerProcess([sys.executable, "-m", "smvision.container.serve", "--model-dir", str(model),
                                "--port", str(port)], f"http://127.0.0.1:{port}", name="serve",
                               env={**os.environ, "SMVISION_BIND_HOST": "127.0.0.1"}, log_path=log,
                               ready_timeout_s=300)
        started = time.monotonic()
        try:
            with server:
                server.wait_ready()
                result["serve"] = f"ready in {time.monotonic() - started:.1f} s"
        except Exception as exc:  # noqa: BLE001 - a refusal is a result here
            result["serve"] = f"did not start: {type(exc).__name__}"
        lines = log.read_text(errors="replace").splitlines()
        result["serve_log"] = [line.split("smvision.container: ", 1)[-1] for line in lines
                               if "GPU" in line or "re-executing" in line or "serve: error" in line]
    report.data["startup"] = result
    print(f"start-up: {decision.log_line()}; probe ok={probe.ok} {probe.error}", flush=True)
    for line in result["serve_log"]:
        print(f"  serve: {line}", flush=True)


def gpu_env(decision: Any) -> dict[str, str]:
    """This process's environment as `serve` would run the model: compat first on
    LD_LIBRARY_PATH when the decision says so."""
    from smvision.container import gpu

    env = dict(os.environ)
    if decision.enable:
        env["LD_LIBRARY_PATH"] = gpu.library_path_with(env, decision.compat_dir)
    return env


# --- timing helpers -----------------------------------------------------------------------


def timed(call: Callable[[], Any], rounds: int, device: str) -> float:
    """Median seconds of `rounds` calls (after one untimed warm-up call)."""
    import torch

    call()
    times = []
    for _ in range(rounds):
        if device == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        call()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def reset_peak(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_gib(device: str) -> float | None:
    import torch

    return round(torch.cuda.max_memory_allocated() / GIB, 3) if device == "cuda" else None


def photos() -> list[Any]:
    import numpy as np
    from PIL import Image

    from devtools.local_s3 import skimage_photo

    return [np.asarray(Image.open(skimage_photo(name)).convert("RGB")) for name in PHOTO_NAMES]


def is_oom(exc: BaseException) -> bool:
    return "out of memory" in str(exc).lower()


# --- 2. SAM --------------------------------------------------------------------------------


def sdpa_attention(encoder_model: Any) -> None:
    """Replace every segment_anything Attention's forward in encoder_model with one
    scaled_dot_product_attention call, the decomposed relative positions as its mask
    (the same maths; benchmark only)."""
    import torch
    from segment_anything.modeling.image_encoder import Attention, get_rel_pos
    from torch.nn import functional as F

    def forward(self: Any, x: torch.Tensor) -> torch.Tensor:
        B, H, W, _ = x.shape
        qkv = self.qkv(x).reshape(B, H * W, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.reshape(3, B * self.num_heads, H * W, -1).unbind(0)
        mask = None
        if self.use_rel_pos:
            r_q = q.reshape(q.shape[0], H, W, q.shape[-1])
            rel_h = torch.einsum("bhwc,hkc->bhwk", r_q, get_rel_pos(H, H, self.rel_pos_h))
            rel_w = torch.einsum("bhwc,wkc->bhwk", r_q, get_rel_pos(W, W, self.rel_pos_w))
            mask = (rel_h[:, :, :, :, None] + rel_w[:, :, :, None, :]).reshape(q.shape[0], H * W, H * W)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scale)
        out = out.reshape(B, self.num_heads, H, W, -1).permute(0, 2, 3, 1, 4).reshape(B, H, W, -1)
        return self.proj(out)

    for module in encoder_model.modules():
        if isinstance(module, Attention):
            module.forward = types.MethodType(forward, module)


def sam(report: Report, args: argparse.Namespace, budget: Budget, images: list[Any]) -> None:
    """SAM encode per image and batched, per precision and attention, with peak memory."""
    import numpy as np
    import torch

    from smvision.models.sam.build import build_image_encoder, sam_config
    from smvision.models.sam.encoder import SamEncoder

    precisions = ["fp32", "bf16", "fp16"] if args.device == "cuda" else ["fp32"]
    for model_type in args.sam_models:
        estimate = {"vit_h": 90.0, "vit_l": 60.0}.get(model_type, 30.0) * (args.rounds / 5) if args.device == "cuda" else 5
        if not budget.allows(estimate):
            report.skip(f"SAM {model_type}", f"{budget.left():.0f} s left, about {estimate:.0f} s needed")
            continue
        config = sam_config(model_type)
        torch.manual_seed(0)
        with torch.device(args.device):
            state_dict = {k: v.cpu() for k, v in build_image_encoder(config).state_dict().items()}
        reference = None
        for precision in precisions:
            for attention in ("eager", "sdpa"):
                for batch in (1, args.sam_batch):
                    row = {"model": model_type, "precision": precision, "attention": attention, "batch": batch}
                    reset_peak(args.device)
                    try:
                        encoder = SamEncoder(config, state_dict, device=args.device, precision=precision)
                        if attention == "sdpa":
                            sdpa_attention(encoder.model)
                        inputs = [images[i % len(images)] for i in range(batch)]
                        seconds = timed(lambda: encoder.encode(inputs), args.rounds, args.device)
                        embedding = encoder.encode(inputs[:1])[0].array
                    except torch.OutOfMemoryError as exc:
                        row["error"] = f"out of memory ({str(exc).splitlines()[0][:120]})"
                    except RuntimeError as exc:
                        row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
                    else:
                        if reference is None:
                            reference = embedding  # fp32 eager, batch 1: the first configuration
                        a, b = reference.ravel().astype(np.float64), embedding.ravel().astype(np.float64)
                        row.update(ms_per_image=round(1000 * seconds / batch, 2), images_per_s=round(batch / seconds, 2),
                                   cosine_vs_fp32=round(float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b))), 6),
                                   peak_gib=peak_gib(args.device))
                    finally:
                        encoder = None
                    report.data["sam"].append(row)
                    print(f"SAM {row}", flush=True)
        report.save()


def compile_section(report: Report, args: argparse.Namespace, budget: Budget, images: list[Any]) -> None:
    """torch.compile last: it only says whether compiling would pay, when time is left."""
    if args.no_compile or args.smoke:
        report.skip("torch.compile", "--no-compile" if args.no_compile else "--smoke")
        return
    if not budget.allows(150):
        report.skip("torch.compile", f"{budget.left():.0f} s left, about 150 s needed")
        return
    report.data["sam_compile"] = sam_compile(args, images)
    report.save()


def sam_compile(args: argparse.Namespace, images: list[Any]) -> dict[str, Any]:
    """torch.compile of vit_b in bf16 at batch 1 against eager: whether it pays."""
    import torch

    from smvision.models.sam.build import build_image_encoder, sam_config
    from smvision.models.sam.encoder import SamEncoder

    config = sam_config("vit_b")
    torch.manual_seed(0)
    with torch.device(args.device):
        state_dict = {k: v.cpu() for k, v in build_image_encoder(config).state_dict().items()}
    encoder = SamEncoder(config, state_dict, device=args.device, precision="bf16")
    inputs = images[:1]
    eager = timed(lambda: encoder.encode(inputs), args.rounds, args.device)
    result: dict[str, Any] = {"model": "vit_b", "precision": "bf16", "batch": 1, "eager_ms": round(1000 * eager, 2)}
    try:
        encoder.model = torch.compile(encoder.model)
        started = time.perf_counter()
        encoder.encode(inputs)
        result["compile_s"] = round(time.perf_counter() - started, 1)
        compiled = timed(lambda: encoder.encode(inputs), args.rounds, args.device)
    except Exception as exc:  # noqa: BLE001 - whatever stops the compiler is the result
        result["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
        result["pays"] = False
        return result
    result["compiled_ms"] = round(1000 * compiled, 2)
    result["speedup"] = round(eager / compiled, 3)
    saved = eager - compiled
    result["break_even_images"] = round(result["compile_s"] / saved) if saved > 0 else None
    result["pays"] = compiled < 0.9 * eager
    print(f"torch.compile {result}", flush=True)
    return result


# --- 3. EfficientDet ------------------------------------------------------------------------


def efficientdet(report: Report, args: argparse.Namespace, budget: Budget, images: list[Any]) -> None:
    """images/s at each batch in fp32 and float16, peak memory, float16's fidelity."""
    import torch

    from devtools.weights import trained_like_efficientdet
    from smvision.models.efficientdet import EfficientDetector, efficientdet_config

    precisions = ("fp32", "fp16") if args.device == "cuda" else ("fp32",)
    for coef in args.coefs:
        estimate = {0: 20.0, 4: 40.0, 7: 90.0}.get(coef, 60.0) if args.device == "cuda" else 10
        if not budget.allows(estimate):
            report.skip(f"EfficientDet D{coef}", f"{budget.left():.0f} s left, about {estimate:.0f} s needed")
            continue
        started = time.perf_counter()
        state_dict = trained_like_efficientdet(coef, images).state_dict()
        print(f"D{coef}: trained-like weights in {time.perf_counter() - started:.1f} s", flush=True)
        detectors = {}
        for precision in precisions:
            try:
                detectors[precision] = EfficientDetector(efficientdet_config(coef), state_dict, device=args.device,
                                                         float16=precision == "fp16")
            except torch.OutOfMemoryError as exc:
                report.data["efficientdet"].append({"coef": coef, "precision": precision, "batch": 0,
                                                    "error": f"out of memory loading ({str(exc)[:120]})"})
                continue
            detector = detectors[precision]
            for batch in args.det_batches:
                row = {"coef": coef, "precision": precision, "batch": batch}
                reset_peak(args.device)
                inputs = [images[i % len(images)] for i in range(batch)]
                try:
                    seconds = timed(lambda: detector.detect(inputs, [0.2] * batch, [0.2] * batch), args.rounds,
                                    args.device)
                except torch.OutOfMemoryError as exc:
                    row["error"] = f"out of memory ({str(exc).splitlines()[0][:120]})"
                else:
                    row.update(images_per_s=round(batch / seconds, 2), ms_per_batch=round(1000 * seconds, 2),
                               peak_gib=peak_gib(args.device))
                report.data["efficientdet"].append(row)
                print(f"EfficientDet {row}", flush=True)
        candidate = "fp16" if "fp16" in detectors else "fp32"  # --smoke on CPU: fp32 against itself
        if "fp32" in detectors and budget.allows(5):
            report.data["efficientdet_fidelity"].append(
                fidelity(coef, detectors["fp32"], detectors[candidate], candidate, images))
            print(f"fidelity {report.data['efficientdet_fidelity'][-1]}", flush=True)
        detectors.clear()
        report.save()


def fidelity(coef: int, reference: Any, candidate: Any, name: str, images: list[Any]) -> dict[str, Any]:
    """Raw output differences, and fp32's detections at the 50-best-anchors threshold found
    again by the candidate (same class, every coordinate within 1 px)."""
    import numpy as np
    import torch

    def outputs(detector: Any) -> tuple[np.ndarray, np.ndarray]:
        batch, _ = detector.preprocess(images)
        regression, classification = detector.forward(batch)
        return regression.float().cpu().numpy(), classification.float().cpu().numpy()

    with torch.inference_mode():
        reg_ref, cls_ref = outputs(reference)
        reg_new, cls_new = outputs(candidate)
    found = total = 0
    worst = 0.0
    for i, image in enumerate(images):
        threshold = float(np.sort(cls_ref[i].max(axis=-1))[-50])
        ref = reference.detect([image], [threshold], [0.5])[0]
        new = candidate.detect([image], [threshold], [0.5])[0]
        ref_boxes, ref_classes = np.asarray(ref.boxes).reshape(-1, 4), np.asarray(ref.class_ids)
        new_boxes, new_classes = np.asarray(new.boxes).reshape(-1, 4), np.asarray(new.class_ids)
        total += len(ref_boxes)
        for box, cls in zip(ref_boxes, ref_classes):
            same = new_boxes[new_classes == cls]
            if len(same):
                diff = float(np.abs(same - box).max(axis=1).min())
                if diff <= 1.0:
                    found += 1
                    worst = max(worst, diff)
    return {"coef": coef, "candidate": name, "max_score_diff": float(np.abs(cls_new - cls_ref).max()),
            "max_regression_diff": float(np.abs(reg_new - reg_ref).max()), "top_score": float(cls_ref.max()),
            "detections_fp32": total, "found_within_1px": found, "max_box_diff_px": round(worst, 4)}


# --- the table -----------------------------------------------------------------------------


def markdown(data: dict[str, Any]) -> str:
    """The README table: host and start-up, SAM, torch.compile, EfficientDet, fidelity."""
    host, start = data.get("host", {}), data.get("startup", {})
    probe = start.get("probe", {})
    lines = [f"Measured {data['when']}{' (smoke run on CPU: not GPU numbers)' if data.get('smoke') else ''}: "
             f"{', '.join(probe.get('devices') or ['no GPU'])}, NVIDIA driver {start.get('driver', 'none')}, "
             f"torch {host.get('torch', '?')} (CUDA {host.get('cuda') or 'none'}).", "",
             f"Start-up decision: {start.get('decision', 'not run')}; CUDA probe: "
             f"{'ok' if probe.get('ok') else probe.get('error', 'not run')}; serve: {start.get('serve', 'not run')}.", ""]
    if data["sam"]:
        lines += ["| SAM encoder | precision | attention | batch | ms / image | images/s | cosine to fp32 | peak GiB |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        for row in data["sam"]:
            lines.append(f"| {row['model']} | {row['precision']} | {row['attention']} | {row['batch']} | "
                         + (f"{row['error']} | | | |" if "error" in row else
                            f"{row['ms_per_image']} | {row['images_per_s']} | {row['cosine_vs_fp32']} | {row['peak_gib']} |"))
        lines.append("")
    compiled = data.get("sam_compile")
    if compiled:
        lines += [("torch.compile, vit_b bf16 batch 1: " + (compiled["error"] if "error" in compiled else
                   f"{compiled['compile_s']} s to compile, {compiled['eager_ms']} -> {compiled['compiled_ms']} ms "
                   f"({compiled['speedup']}x, even after {compiled['break_even_images']} images)")
                   + f": {'pays' if compiled['pays'] else 'does not pay'}."), ""]
    if data["efficientdet"]:
        lines += ["| EfficientDet | precision | batch | images/s | ms / batch | peak GiB |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for row in data["efficientdet"]:
            lines.append(f"| D{row['coef']} | {row['precision']} | {row['batch']} | "
                         + (f"{row['error']} | | |" if "error" in row else
                            f"{row['images_per_s']} | {row['ms_per_batch']} | {row['peak_gib']} |"))
        lines.append("")
    if data["efficientdet_fidelity"]:
        lines += ["| EfficientDet | vs fp32 | max score diff | max regression diff | fp32 detections found (1 px) |",
                  "| --- | --- | --- | --- | --- |"]
        for row in data["efficientdet_fidelity"]:
            lines.append(f"| D{row['coef']} | {row['candidate']} | {row['max_score_diff']:.2e} | "
                         f"{row['max_regression_diff']:.2e} | {row['found_within_1px']} / {row['detections_fp32']} |")
        lines.append("")
    if data["skipped"]:
        lines += ["Skipped: " + "; ".join(f"{s['what']} ({s['why']})" for s in data["skipped"]) + ".", ""]
    return "\n".join(lines)


def update_readme(readme: Path, table: str) -> None:
    """Replace what lies between the gpu-benchmark markers with table."""
    text = readme.read_text()
    start, end = text.find(README_START), text.find(README_END)
    if start < 0 or end < start:
        raise SystemExit(f"{readme}: no {README_START} ... {README_END} block to write the table into")
    readme.write_text(text[: start + len(README_START)] + "\n" + table.rstrip() + "\n" + text[end:])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("benchmarks/gpu.sh: no CUDA device here (torch.cuda.is_available() is False); "
              "`--smoke` runs every code path on the CPU", file=sys.stderr)
        report = Report(args.out, None, args)
        startup(report)
        report.save()
        return 1
    budget = Budget(args.budget_s)
    report = Report(args.out, args.readme, args)
    report.data["host"] = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
                           "budget_s": args.budget_s}
    startup(report)
    report.save()
    images = photos()
    sam(report, args, budget, images)
    efficientdet(report, args, budget, images)
    compile_section(report, args, budget, images)
    report.data["host"]["seconds"] = round(args.budget_s - budget.left(), 1)
    report.save()
    print(f"wrote {report.json_path} and {report.md_path}" + (f", {args.readme}" if args.readme else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
