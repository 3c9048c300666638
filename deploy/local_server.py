"""`smvision serve` as a child process on 127.0.0.1, for local batch transform and bench."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import urllib3

from smvision.container.logs import MODEL_LOADED
from smvision.container.settings import ENV_LOG_LEVEL
from smvision.deploy.processes import free_port, stop_process

SERVE = "import sys; from smvision.cli import main; sys.exit(main())"


class ServerError(RuntimeError):
    """The local server did not become ready; the message carries its log's tail."""


def error_text(status: int, data: bytes) -> str:
    """The server's message in an error answer: its JSON "error", else the text (500
    characters at most), else 'HTTP <status>'."""
    text = data.decode("utf-8", "replace")
    try:
        answer = json.loads(text)
        if isinstance(answer, dict) and isinstance(answer.get("error"), str):
            return answer["error"]
    except ValueError:
        pass
    return text.strip()[:500] or f"HTTP {status}"


class LocalServer:
    """Start `smvision serve --model-dir DIR` with extra environment; stop it on exit.

    Use as a context manager; .url is http://127.0.0.1:PORT once /ping answers 200 and,
    with `workers` (`serve --workers N`), once every worker has loaded its model (until
    then the workers that are ready take every request). The log goes to `log_path`
    (kept), or to a temporary file removed by stop().
    """

    def __init__(self, model_dir: str | Path, env: dict[str, str] | None = None, ready_timeout_s: float = 300,
                 workers: int | None = None, log_path: str | Path | None = None) -> None:
        self.model_dir = Path(model_dir)
        self.env = dict(env or {})
        self.ready_timeout_s = ready_timeout_s
        self.workers = workers
        level = (self.env.get(ENV_LOG_LEVEL) or os.environ.get(ENV_LOG_LEVEL) or "info").strip().lower()
        if workers and level not in ("debug", "info"):
            raise ValueError(f"LocalServer(workers=...) counts the workers' '{MODEL_LOADED}' log lines: "
                             f"{ENV_LOG_LEVEL}={level} hides them")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None
        self._keep_log = log_path is not None
        self._log = (open(log_path, "wb") if log_path is not None
                     else tempfile.NamedTemporaryFile(prefix="smvision-serve-", suffix=".log", delete=False))

    def __enter__(self) -> "LocalServer":
        if not self.model_dir.is_dir():
            raise ServerError(f"--model-dir {self.model_dir} is not a directory (extract model.tar.gz there)")
        env = {**os.environ, "SMVISION_BIND_HOST": "127.0.0.1", **self.env}
        self.process = subprocess.Popen(
            [sys.executable, "-c", SERVE, "serve", "--model-dir", str(self.model_dir), "--port", str(self.port),
             *(["--workers", str(self.workers)] if self.workers else [])],
            env=env, stdout=self._log, stderr=subprocess.STDOUT,
        )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _wait_ready(self) -> None:
        http = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(connect=1, read=3))
        deadline = time.monotonic() + self.ready_timeout_s
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                code = self.process.returncode if self.process else "?"
                raise ServerError(f"smvision serve exited with {code}:\n{self.log_tail()}")
            try:
                answer = http.request("GET", self.url + "/ping")
            except urllib3.exceptions.HTTPError:
                answer = None
            if answer is not None and answer.status == 200 and self.loaded_workers() >= (self.workers or 0):
                return
            if answer is not None and b"failed to load" in answer.data:  # for good: no point waiting
                raise ServerError(f"{self.model_dir}: {error_text(answer.status, answer.data)}\n{self.log_tail()}")
            time.sleep(0.2)
        raise ServerError(f"smvision serve not ready after {self.ready_timeout_s:g} s:\n{self.log_tail()}")

    def loaded_workers(self) -> int:
        """How many times a worker has logged that its model loaded (restarts count too)."""
        return self.log().count(MODEL_LOADED)

    def log(self) -> str:
        """Everything the server has logged so far."""
        if not self._log.closed:
            self._log.flush()
        return Path(self._log.name).read_text(errors="replace")

    def log_tail(self, lines: int = 20) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def stop(self, timeout_s: float = 30) -> int | None:
        """SIGTERM (the server finishes in-flight requests), SIGKILL if it lingers; returns
        its exit code (None if it never started)."""
        code = stop_process(self.process, timeout_s) if self.process is not None else None
        if not self._log.closed:
            self._log.close()
            if not self._keep_log:
                Path(self._log.name).unlink(missing_ok=True)
        return code
