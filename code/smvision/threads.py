"""How many CPU threads one worker process's model uses, set once when the model loads.

K worker processes on N cores each running torch (or ONNX Runtime) on all N cores
oversubscribe the CPU: throughput falls several times. Each worker gets N // K threads
(at least one) unless SMVISION_THREADS or OMP_NUM_THREADS says otherwise
(smvision.settings.RuntimeSettings.compute_threads). load_model calls use_threads once,
on the thread that serves requests; ONNX Runtime sessions take the same number from the
settings their loader is given.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Mapping

from smvision.settings import RuntimeSettings, cpu_count  # noqa: F401 (cpu_count: re-export)

log = logging.getLogger("smvision")

__all__ = ["THREADS_ENV", "WORKERS_ENV", "cpu_count", "threads_per_worker", "use_threads"]

THREADS_ENV = "SMVISION_THREADS"
WORKERS_ENV = "SAGEMAKER_MODEL_SERVER_WORKERS"


def threads_per_worker(env: Mapping[str, str] | None = None) -> int:
    """The compute threads the environment asks for (scripts and tests that build a
    runtime without loading an archive; loaders use their settings)."""
    return RuntimeSettings.from_env(env).compute_threads()[0]


_said: set[tuple[int, str]] = set()  # what this process has logged already


def use_threads(settings: RuntimeSettings) -> int:
    """Give this process's model settings.compute_threads() threads, and say so in the log
    (once): OMP_NUM_THREADS for a torch imported from now on (it reads the variable once,
    at import), torch.set_num_threads for one already imported. Returns the number.

    `serve` calls it before model_fn (any entry script) and load_model calls it (under
    any server); the second call changes nothing."""
    threads, source = settings.compute_threads()
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    torch = sys.modules.get("torch")
    if torch is not None and hasattr(torch, "set_num_threads"):
        torch.set_num_threads(threads)
    if (threads, source) not in _said:
        _said.add((threads, source))
        log.info("%d compute thread(s) per worker (%s)", threads, source)
    return threads
