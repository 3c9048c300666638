"""The serving process's settings: one frozen dataclass, read from the environment.

SageMaker configures a hosting container through environment variables; these are the
ones the SageMaker inference toolkit honours, with its defaults, plus a few of our own
(``SMVISION_*``).  Every value is checked once, at start, so a bad one stops the process
with a message that names the variable, instead of a worker that crash-loops.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass

from smvision.settings import flag, integer

MB = 1024 * 1024

#: Our own variables (everything else is SageMaker's).
ENV_MODEL_DIR = "SMVISION_MODEL_DIR"  # overrides $SAGEMAKER_BASE_DIR/model
ENV_HOST = "SMVISION_BIND_HOST"  # interface to bind; SageMaker needs 0.0.0.0
ENV_THREADS = "SMVISION_HANDLER_THREADS"  # handler threads per worker process
ENV_LOG_LEVEL = "SMVISION_LOG_LEVEL"
ENV_STUCK_AFTER = "SMVISION_STUCK_AFTER_S"  # /ping 503 once a request overruns its timeout by this
ENV_DRAIN = "SMVISION_DRAIN_S"  # after SIGTERM, seconds in-flight requests may still take

_BATCH_STRATEGIES = {
    "multirecord": "MULTI_RECORD",
    "multi_record": "MULTI_RECORD",
    "singlerecord": "SINGLE_RECORD",
    "single_record": "SINGLE_RECORD",
}
_LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


class SettingsError(ValueError):
    """An environment variable with a value the server cannot use."""


@dataclass(frozen=True)
class Settings:
    model_dir: str = "/opt/ml/model"
    program: str = "inference.py"
    host: str = "0.0.0.0"
    port: int = 8080
    workers: int = 1
    handler_threads: int = 1
    timeout_s: float = 60.0
    max_payload_mb: float = 6.0
    batch: bool = False
    batch_strategy: str = "MULTI_RECORD"
    max_concurrent_transforms: int | None = None
    default_accept: str = "application/json"
    log_level: str = "info"
    stuck_after_s: float = 10.0
    drain_s: float = 20.0

    @property
    def max_payload_bytes(self) -> int | None:
        """Largest request body accepted, in bytes; None means no limit (MaxPayloadInMB 0)."""
        if self.max_payload_mb == 0:
            return None
        return int(self.max_payload_mb * MB)

    @property
    def code_dir(self) -> str:
        return os.path.join(self.model_dir, "code")

    @property
    def module_name(self) -> str:
        return self.program[:-3] if self.program.endswith(".py") else self.program

    @property
    def entry_script(self) -> str:
        return os.path.join(self.code_dir, self.module_name + ".py")

    def execution_parameters(self) -> dict:
        """The body of GET /execution-parameters (what batch transform asks first)."""
        mb = self.max_payload_mb
        return {
            "MaxConcurrentTransforms": self.max_concurrent_transforms or self.workers,
            "BatchStrategy": self.batch_strategy,
            "MaxPayloadInMB": int(mb) if float(mb).is_integer() else mb,
        }

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        base_dir = env.get("SAGEMAKER_BASE_DIR") or "/opt/ml"
        model_dir = env.get(ENV_MODEL_DIR) or os.path.join(base_dir, "model")
        program = (env.get("SAGEMAKER_PROGRAM") or "inference.py").strip()
        if not program or "/" in program or "\\" in program or program in (".py", "."):
            raise SettingsError(
                f"SAGEMAKER_PROGRAM={program!r}: expected a file name in <model dir>/code, "
                "such as inference.py"
            )
        strategy_raw = env.get("SAGEMAKER_BATCH_STRATEGY", "").strip()
        if strategy_raw:
            strategy = _BATCH_STRATEGIES.get(strategy_raw.lower())
            if strategy is None:
                raise SettingsError(
                    f"SAGEMAKER_BATCH_STRATEGY={strategy_raw!r}: expected MultiRecord or "
                    "SingleRecord"
                )
        else:
            strategy = "MULTI_RECORD"
        log_level = (env.get(ENV_LOG_LEVEL) or "info").strip().lower()
        if log_level not in _LOG_LEVELS:
            raise SettingsError(f"{ENV_LOG_LEVEL}={log_level!r}: expected one of {_LOG_LEVELS}")
        default_accept = (env.get("SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT") or "").strip()
        mct = env.get("SAGEMAKER_MAX_CONCURRENT_TRANSFORMS", "").strip()
        return cls(
            model_dir=model_dir,
            program=program,
            host=(env.get(ENV_HOST) or "0.0.0.0").strip(),
            port=_int(env, "SAGEMAKER_BIND_TO_PORT", 8080, 1, 65535),
            workers=_int(env, "SAGEMAKER_MODEL_SERVER_WORKERS", 1, 1, 1024),
            handler_threads=_int(env, ENV_THREADS, 1, 1, 1024),
            timeout_s=_number(env, "SAGEMAKER_MODEL_SERVER_TIMEOUT", 60.0, positive=True),
            max_payload_mb=_number(env, "SAGEMAKER_MAX_PAYLOAD_IN_MB", 6.0, positive=False),
            batch=_bool(env, "SAGEMAKER_BATCH"),
            batch_strategy=strategy,
            max_concurrent_transforms=(
                _int(env, "SAGEMAKER_MAX_CONCURRENT_TRANSFORMS", 1, 1, 1024) if mct else None
            ),
            default_accept=default_accept or "application/json",
            log_level=log_level,
            stuck_after_s=_number(env, ENV_STUCK_AFTER, 10.0, positive=True),
            drain_s=_number(env, ENV_DRAIN, 20.0, positive=False),
        )


def _int(env: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = (env.get(name) or "").strip()
    if not raw:
        return default
    try:
        return integer(low, high)(raw, name)
    except ValueError as exc:
        raise SettingsError(str(exc)) from None


def _number(env: Mapping[str, str], name: str, default: float, *, positive: bool) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r}: expected a number") from None
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        raise SettingsError(
            f"{name}={raw!r}: expected a {'positive' if positive else 'non-negative'} number"
        )
    return value


def _bool(env: Mapping[str, str], name: str) -> bool:
    raw = (env.get(name) or "").strip()
    if not raw:
        return False
    try:
        return flag(raw, name)
    except ValueError as exc:
        raise SettingsError(str(exc)) from None
