"""The ``serve`` process: uvicorn running the app of smvision.container.app.

SageMaker starts a hosting container as ``docker run IMAGE serve``; the ``serve``
console script is :func:`main` (a leading "serve" argument is accepted and ignored).
The project CLI's ``smvision serve --model-dir DIR --port N`` calls :func:`run`.

Settings come from the environment (see settings.py); run()'s arguments override
SMVISION_MODEL_DIR, SAGEMAKER_BIND_TO_PORT and SAGEMAKER_MODEL_SERVER_WORKERS, and are
written back to the environment, which is how uvicorn's worker processes (more than one
worker) receive them.

On a machine with an NVIDIA GPU, run() first decides CUDA forward compatibility and
re-executes the process with LD_LIBRARY_PATH set when the driver needs it, then checks that
CUDA initialises, and refuses to start (exit 3) when it does not (see gpu.py).

SIGTERM (and Ctrl-C): uvicorn's graceful shutdown (stop accepting, let in-flight
requests finish), then run() returns and the process exits 0.
"""

from __future__ import annotations

import argparse
import logging
import logging.config
import os
import signal
import sys
import threading

from smvision.container import gpu
from smvision.container.settings import (
    ENV_MODEL_DIR,
    Settings,
    SettingsError,
)
from smvision.settings import RuntimeSettings

log = logging.getLogger("smvision.container")

APP_FACTORY = "smvision.container.app:create_app"


def log_config(level: str) -> dict:
    """Everything to stderr, one line each (control characters escaped, credentials
    redacted: see logs.py); uvicorn's access log off (ours replaces it)."""
    level = level.upper()
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "line": {
                "()": "smvision.container.logs.SafeFormatter",
                "format": "%(asctime)s [%(process)d] %(levelname)s %(name)s: %(message)s",
            }
        },
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "line",
                "stream": "ext://sys.stderr",
            }
        },
        "loggers": {
            "uvicorn": {"handlers": ["stderr"], "level": level, "propagate": False},
            "uvicorn.error": {"level": level},
            "uvicorn.access": {"handlers": [], "level": "WARNING", "propagate": False},
            "smvision": {"handlers": ["stderr"], "level": level, "propagate": False},
        },
        # Entry scripts' own loggers, as TorchServe would show them.
        "root": {"handlers": ["stderr"], "level": level},
    }


def check(settings: Settings) -> None:
    """Refuse to start on a model dir or entry script that is not there, or a runtime
    setting (smvision.settings: SMVISION_THREADS, OMP_NUM_THREADS, thresholds, ...) whose
    value cannot be used."""
    try:
        RuntimeSettings.from_env()
    except ValueError as exc:
        raise SettingsError(str(exc)) from None
    if not os.path.isdir(settings.model_dir):
        raise SettingsError(
            f"model dir {settings.model_dir!r} is not a directory (set --model-dir, "
            f"{ENV_MODEL_DIR}, or SAGEMAKER_BASE_DIR)"
        )
    if not os.path.isfile(settings.entry_script):
        raise SettingsError(
            f"no entry script {settings.entry_script!r} (SAGEMAKER_PROGRAM="
            f"{settings.program!r}); the model dir needs code/{settings.module_name}.py"
        )


def _exit_zero(signum: int, frame: object) -> None:
    raise SystemExit(0)


def run(model_dir: str | None = None, port: int | None = None,
        workers: int | None = None) -> None:
    """Serve the model in model_dir until SIGTERM/SIGINT; return after a graceful stop.

    Raises SettingsError (a ValueError) for a bad setting, before anything starts, and
    gpu.GpuStartupError when a GPU is visible but CUDA cannot initialise. May re-execute
    the process (gpu.start) before serving.
    """
    import uvicorn  # here, so `smvision --help` stays fast

    overrides = {}
    if model_dir is not None:
        overrides[ENV_MODEL_DIR] = os.path.abspath(model_dir)
    if port is not None:
        overrides["SAGEMAKER_BIND_TO_PORT"] = str(port)
    if workers is not None:
        overrides["SAGEMAKER_MODEL_SERVER_WORKERS"] = str(workers)
    settings = Settings.from_env({**os.environ, **overrides})
    check(settings)
    logging.config.dictConfig(log_config(settings.log_level))
    gpu.start()  # may re-execute this process with LD_LIBRARY_PATH for CUDA forward compatibility
    os.environ.update(overrides)  # uvicorn's worker processes read settings from here
    os.environ[ENV_MODEL_DIR] = os.path.abspath(settings.model_dir)

    # After its graceful shutdown uvicorn re-raises the signal it caught with the
    # handler it found; make that handler an ordinary exit 0 (and the same for a
    # SIGTERM that arrives before uvicorn has installed its own).
    previous = None
    in_main = threading.current_thread() is threading.main_thread()
    if in_main:
        previous = signal.signal(signal.SIGTERM, _exit_zero)
    try:
        uvicorn.run(
            APP_FACTORY,
            factory=True,
            host=settings.host,
            port=settings.port,
            workers=settings.workers,
            log_config=log_config(settings.log_level),
            access_log=False,
            server_header=False,
            timeout_keep_alive=60,
            timeout_graceful_shutdown=None,
            lifespan="on",
        )
    except SystemExit as exc:
        if exc.code not in (0, None):
            raise
    except KeyboardInterrupt:
        pass
    finally:
        if in_main and previous is not None:
            signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    """The ``serve`` console script (``docker run IMAGE serve``)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "serve":
        args = args[1:]
    parser = argparse.ArgumentParser(
        prog="serve",
        description="Serve a SageMaker PyTorch model dir (model.tar.gz contents) on the "
        "SageMaker hosting contract: GET /ping, POST /invocations.",
    )
    parser.add_argument("--model-dir", help="default: $SAGEMAKER_BASE_DIR/model (/opt/ml/model)")
    parser.add_argument("--port", type=int, help="default: $SAGEMAKER_BIND_TO_PORT (8080)")
    parser.add_argument(
        "--workers", type=int, help="default: $SAGEMAKER_MODEL_SERVER_WORKERS (1)"
    )
    ns = parser.parse_args(args)
    try:
        run(ns.model_dir, ns.port, ns.workers)
    except gpu.GpuStartupError as exc:
        print(f"serve: error: {exc}", file=sys.stderr)
        return 3
    except SettingsError as exc:
        print(f"serve: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
