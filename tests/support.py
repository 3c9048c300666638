"""Shared test plumbing: free ports, bounded waits, processes that always get stopped."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import requests

from smvision.deploy.local_s3 import BIN, LocalS3, free_port, skimage_photo, stop_process as stop

PYTHON = sys.executable


def wait_for(check: Callable[[], bool], timeout: float, what: str, process: subprocess.Popen | None = None) -> None:
    """Poll check() until it is true; fail after timeout or if process exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{what}: process exited with {process.returncode}")
        try:
            if check():
                return
        except requests.RequestException:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{what}: not ready after {timeout} s")


class Server:
    """`smvision serve` as a real process on 127.0.0.1."""

    def __init__(self, model_dir: Path, env: dict[str, str] | None = None, log_path: Path | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self._log = open(log_path, "wb") if log_path else subprocess.DEVNULL
        self.process = subprocess.Popen(
            [str(BIN / "smvision"), "serve", "--model-dir", str(model_dir), "--port", str(self.port)],
            env={**os.environ, **(env or {})},
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def wait_ready(self, timeout: float = 120) -> "Server":
        wait_for(lambda: requests.get(self.url + "/ping", timeout=2).status_code == 200, timeout, "serve /ping", self.process)
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path else ""

    def stop(self) -> int:
        code = stop(self.process)
        if self._log is not subprocess.DEVNULL:
            self._log.close()
        return code
