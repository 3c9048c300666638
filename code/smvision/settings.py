"""The runtime's settings: one frozen object, read from the environment once, when the
model loads (model_fn), and handed to the kind's loader. Nothing on the request path
reads the environment.

Each field is one row: the variable, its default, how its value is checked and what it
means (README's settings table says the same). A bad value stops the model from loading
with a message that names the variable, rather than failing requests one by one.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Callable

#: parse(raw text, variable name) -> value, or ValueError naming the variable
Parse = Callable[[str, str], Any]


@dataclass(frozen=True)
class Variable:
    """One environment variable: its name, how its text is read, what it is for."""

    name: str
    parse: Parse
    doc: str


def _variable(name: str, default: Any, parse: Parse, doc: str) -> Any:
    return field(default=default, metadata={"variable": Variable(name, parse, doc)})


def integer(low: int, high: int) -> Parse:
    """A whole number in [low, high]."""

    def parse(raw: str, name: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            raise ValueError(f"{name}={raw!r} is not an integer") from None
        if not low <= value <= high:
            raise ValueError(f"{name}={value} is outside {low}..{high}")
        return value

    return parse


def unit_interval(raw: str, name: str) -> float:
    """A number in (0, 1]."""
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a number; use a value in (0, 1]") from None
    if not math.isfinite(value) or not 0.0 < value <= 1.0:
        raise ValueError(f"{name}={raw!r} is outside (0, 1]")
    return value


def flag(raw: str, name: str) -> bool:
    """1 / true / yes / on, or 0 / false / no / off (any case)."""
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{name}={raw!r} is not a boolean; use true or false")


def choice(*options: str) -> Parse:
    """One of options (any case)."""

    def parse(raw: str, name: str) -> str:
        value = raw.strip().lower()
        if value not in options:
            raise ValueError(f"{name}={raw!r}: use one of {', '.join(options)}")
        return value

    return parse


def names(raw: str, name: str) -> frozenset[str] | None:
    """A comma-separated list of names ('a, b' -> {'a', 'b'}); empty -> None (no limit)."""
    found = frozenset(part.strip() for part in raw.split(",") if part.strip())
    return found or None


def cpu_count() -> int:
    """CPUs this process may run on (its affinity mask, not the machine's total)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


@dataclass(frozen=True)
class RuntimeSettings:
    """What the environment asks of the model runtime (every kind, every server)."""

    # requests and images
    max_records: int = _variable(
        "SMVISION_MAX_RECORDS", 256, integer(1, 10_000_000), "most records in one request (413 beyond)")
    max_image_pixels: int = _variable(
        "SMVISION_MAX_IMAGE_PIXELS", 50_000_000, integer(1, 10**12),
        "decompression-bomb guard: the largest image, checked from its header before decoding (413 beyond)")
    allowed_buckets: frozenset[str] | None = _variable(
        "SMVISION_ALLOWED_BUCKETS", None, names,
        "comma-separated buckets the endpoint may be made to read (and write); unset: any")
    # compute
    threads: int | None = _variable(
        "SMVISION_THREADS", None, integer(1, 4096),
        "compute threads per worker process (default: OMP_NUM_THREADS, else cores // workers)")
    omp_threads: int | None = _variable(
        "OMP_NUM_THREADS", None, integer(1, 4096), "honoured when SMVISION_THREADS is unset")
    workers: int = _variable(
        "SAGEMAKER_MODEL_SERVER_WORKERS", 1, integer(1, 4096), "worker processes sharing the cores")
    batch_size: int | None = _variable(
        "SMVISION_BATCH_SIZE", None, integer(1, 256),
        "images per forward pass (default: EfficientDet 1 on CPU, 8 on a GPU; sam-encode 4)")
    runtime: str = _variable(
        "SMVISION_RUNTIME", "auto", choice("auto", "onnx", "torch"),
        "EfficientDet: auto (ONNX Runtime on CPU, torch on a GPU), onnx or torch")
    # EfficientDet
    compound_coef: int | None = _variable(
        "EFFICIENTDET_COMPOUND_COEF", None, integer(0, 8),
        "if set, must equal the archive's coefficient (a guard against serving the wrong archive)")
    pred_threshold: float = _variable(
        "DEFAULT_PRED_THRESHOLD", 0.2, unit_interval, "score threshold when a record gives none")
    iou_threshold: float = _variable(
        "DEFAULT_IOU_THRESHOLD", 0.2, unit_interval, "NMS IoU threshold when a record gives none")
    max_detections: int = _variable(
        "DEFAULT_MAX_DETECTIONS", 100, integer(1, 10_000), "most detections per image when a record gives none")
    use_float16: bool = _variable("USE_FLOAT16", False, flag, "half precision on a GPU; ignored on CPU")
    # Segment Anything
    max_points: int = _variable(
        "SAM_MAX_POINTS", 256, integer(1, 1_000_000), "sam-decode and sam: most points in one prompt (413 beyond)")
    encoder_precision: str = _variable(
        "SAM_ENCODER_PRECISION", "fp32", choice("fp32", "bf16", "fp16"),
        "SAM's image encoder: fp32, bf16 (a GPU, or a CPU with native bf16) or fp16 (a GPU)")
    embedding_cache_size: int = _variable(
        "SAM_EMBEDDING_CACHE_SIZE", 32, integer(0, 100_000), "sam: embeddings kept per worker; 0 turns the cache off")
    everything_max_prompts: int = _variable(
        "SAM_EVERYTHING_MAX_PROMPTS", 16384, integer(1, 10_000_000),
        "everything mode: most decoder prompts (grid points over all crops) per record (413 beyond)")
    everything_max_answer_mb: int = _variable(
        "SAM_EVERYTHING_MAX_ANSWER_MB", 6, integer(1, 100_000), "everything mode: largest answer per record (413 beyond)")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "RuntimeSettings":
        """Every variable that is set (and not blank) read and checked; the rest default."""
        env = os.environ if env is None else env
        values = {}
        for item in fields(cls):
            variable: Variable = item.metadata["variable"]
            raw = env.get(variable.name)
            if raw is not None and raw.strip():
                values[item.name] = variable.parse(raw.strip(), variable.name)
        return cls(**values)

    @classmethod
    def variables(cls) -> list[tuple[Variable, Any]]:
        """(variable, default) of every setting, in order (for documentation and messages)."""
        return [(item.metadata["variable"], item.default) for item in fields(cls)]

    def compute_threads(self) -> tuple[int, str]:
        """Threads one worker's model may use, and where the number comes from (for the log):
        SMVISION_THREADS, else OMP_NUM_THREADS, else cores // workers (at least one), so K
        workers on N cores do not oversubscribe them."""
        if self.threads is not None:
            return self.threads, f"SMVISION_THREADS={self.threads}"
        if self.omp_threads is not None:
            return self.omp_threads, f"OMP_NUM_THREADS={self.omp_threads}"
        cores = cpu_count()
        return max(1, cores // self.workers), f"{cores} cores // {self.workers} worker(s)"
