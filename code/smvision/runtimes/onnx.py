"""ONNX Runtime sessions, made one way for every model kind (EfficientDet, SAM's decoder).

Threads per session follow smvision.threads (cores // workers unless set), so K worker
processes do not oversubscribe the CPU. On a machine with CUDA and onnxruntime-gpu the
CUDA provider comes first.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from smvision.threads import threads_per_worker

# onnxruntime 1.31 writes a device id and a telemetry database under
# $XDG_CACHE_HOME/Microsoft/DeveloperTools/.onnxruntime when imported, unless this is set
# first: no writes outside the model's temporary dirs (a home may be read-only).
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")


def providers(device: str = "cpu") -> list[str]:
    """Execution providers for device ('cpu' or 'cuda'), best first, that this onnxruntime has."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    wanted = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device == "cuda" else ["CPUExecutionProvider"]
    return [name for name in wanted if name in available] or ["CPUExecutionProvider"]


def create_session(
    model: str | Path | bytes,
    device: str = "cpu",
    threads: int | None = None,
    spinning: bool = True,
    memory_arena: bool = True,
) -> Any:
    """An InferenceSession for an .onnx file (or its bytes), fully optimised, sequential,
    with `threads` intra-op threads (default: smvision.threads.threads_per_worker()).

    spinning=False: idle intra-op threads sleep rather than spin-wait for work
    (session.intra_op.allow_spinning 0): less CPU per call, and much less wall time when
    the cores are shared with other processes (benchmarks/sam_decode.py --spinning).

    memory_arena=False: no CPU memory arena. The arena keeps the most memory any one call
    needed for the life of the process, which suits a graph whose inputs have fixed shapes
    (EfficientDet) and not one whose memory grows with a request (SAM's prompt decoder:
    +370 MiB kept after one 1,024-point prompt)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.enable_cpu_mem_arena = memory_arena
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = threads or threads_per_worker()
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only: ORT's warnings about unused initializers are noise
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, sess_options=options, providers=providers(device))
