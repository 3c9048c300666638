"""TorchServe itself, natively, serving `smvision archive mar` files: for
tests/test_torchserve_mar.py and benchmarks/torchserve_mar.py; no pytest here.

TorchServe 0.12 and Java come from the toolkit test venv (toolkit_harness.ensure_toolkit_venv,
tests/toolkit/setup_toolkit_venv.sh), which already holds every kind's requirements.
One TorchServe at a time: hold toolkit_harness.ToolkitLock() while it runs (the AWS
toolkit refuses to start next to another TorchServe).
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import toolkit_harness as h

MODEL_TYPE = "vit_tiny_test"


def build_mar(kind: str, output: Path, *extra: str) -> subprocess.CompletedProcess:
    """`smvision archive mar KIND --model-type vit_tiny_test --output OUTPUT [extra...]`."""
    argv = [str(h.PROJECT_BIN / "smvision"), "archive", "mar", kind, "--model-type", MODEL_TYPE, "--output", str(output), *extra]
    return subprocess.run(argv, capture_output=True, text=True, timeout=600)


class TorchServe(h.ServerProcess):
    """`torchserve --foreground` with the .mar files of model_store loaded at start,
    every listener on 127.0.0.1, its temp files, logs and config under workdir."""

    label = "torchserve"

    def __init__(
        self, venv: Path, model_store: Path, workdir: Path, env: dict[str, str], settings: dict[str, str] | None = None
    ) -> None:
        """settings: more config.properties lines (e.g. {"decode_input_request": "false"})."""
        others = h.other_torchserve_pids()
        if others:
            raise RuntimeError(f"TorchServe already runs here (pids {others})")
        port = h.free_port()
        tmp, cwd = workdir / "tmp", workdir / "cwd"
        tmp.mkdir(parents=True)
        cwd.mkdir(parents=True)
        config = workdir / "config.properties"
        config.write_text(
            "\n".join(
                [
                    f"inference_address=http://127.0.0.1:{port}",
                    f"management_address=http://127.0.0.1:{h.free_port()}",
                    f"metrics_address=http://127.0.0.1:{h.free_port()}",
                    "grpc_inference_address=127.0.0.1",
                    "grpc_management_address=127.0.0.1",
                    f"grpc_inference_port={h.free_port()}",
                    f"grpc_management_port={h.free_port()}",
                    f"model_store={model_store}",
                    "load_models=" + ",".join(sorted(p.name for p in model_store.glob("*.mar"))),
                    "default_workers_per_model=1",
                    "disable_token_authorization=true",
                    "disable_system_metrics=true",
                    *(f"{key}={value}" for key, value in (settings or {}).items()),
                    "",
                ]
            )
        )
        full_env = h._base_env(
            {
                "PATH": f"{venv / 'bin'}:/usr/local/bin:/usr/bin:/bin",
                "VIRTUAL_ENV": str(venv),
                "TEMP": str(tmp),
                "TMPDIR": str(tmp),
                "LOG_LOCATION": str(cwd / "logs"),
                "METRICS_LOCATION": str(cwd / "logs"),
                **env,
            }
        )
        argv = [str(venv / "bin" / "torchserve"), "--start", "--foreground", "--ncs", "--ts-config", str(config)]
        super().__init__(argv, full_env, cwd, workdir / "torchserve.log", port)

    def predict(self, name: str, call: h.Call, bucket: str) -> h.Reply:
        return h.post(f"{self.url}/predictions/{name}", call.render(bucket), call.headers())

    def wait_model(self, name: str, probe: h.Call, bucket: str, timeout: float) -> None:
        """Until the model answers the probe with 200 (TorchServe is up and its worker loaded)."""
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"torchserve exited ({self.process.returncode}):\n{self.log_tail()}")
            try:
                reply = self.predict(name, probe, bucket)
                if reply.status == 200:
                    return
                last = f"{reply.status} {reply.body[:300]!r}"
            except OSError as exc:
                last = repr(exc)
            time.sleep(0.5)
        raise TimeoutError(f"{name}: no good answer after {timeout:.0f} s (last: {last}):\n{self.log_tail()}")
