"""How many CPU threads one worker process may use for its model.

K worker processes on N cores each running torch (or ONNX Runtime) on all N cores
oversubscribe the CPU: throughput falls several times. Each worker gets N // K threads
(at least one) unless the operator says otherwise.
"""

from __future__ import annotations

import os
from typing import Mapping

from smvision.params import env_int

THREADS_ENV = "SMVISION_THREADS"
WORKERS_ENV = "SAGEMAKER_MODEL_SERVER_WORKERS"


def cpu_count() -> int:
    """CPUs this process may run on (its affinity mask, not the machine's total)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def threads_per_worker(env: Mapping[str, str] | None = None) -> int:
    """SMVISION_THREADS, else OMP_NUM_THREADS, else cores // SAGEMAKER_MODEL_SERVER_WORKERS."""
    env = os.environ if env is None else env
    for name in (THREADS_ENV, "OMP_NUM_THREADS"):
        if (env.get(name) or "").strip():
            return env_int(name, 1, 1, 4096, env)
    workers = env_int(WORKERS_ENV, 1, 1, 4096, env)
    return max(1, cpu_count() // workers)
