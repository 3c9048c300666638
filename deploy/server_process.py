"""A server as a child process on this machine: start it, wait until it is ready, stop it.

`ServerProcess` runs the server of `smvision transform --local` (`smvision_serve`), and every
server the tests, the demo and the benchmarks start (`smvision serve`, moto, TorchServe,
the AWS toolkit); `wait_until` is the one bounded poll they all wait with.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path
from typing import IO, Callable, Mapping, Sequence, TypeVar

T = TypeVar("T")

#: What a readiness check may raise while a server is still starting: a connection
#: refused or reset, an answer cut short.
NOT_YET = (OSError, http.client.HTTPException)

#: How many bytes of a temporary log stop() keeps in memory before removing the file.
KEPT_LOG_BYTES = 1 << 20

SERVE = "import sys; from smvision.cli import main; sys.exit(main())"


class ServerError(RuntimeError):
    """A server exited, or did not become ready in time; the message carries its log's tail."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(check: Callable[[], T], timeout: float, what: str, *, interval: float = 0.1,
               ignore: tuple[type[BaseException], ...] = NOT_YET) -> T:
    """Call check() every `interval` seconds until it returns a true value; return that value.

    An exception of an `ignore` type counts as "not yet"; any other propagates at once (a
    check raises to give up early). TimeoutError after `timeout` seconds, naming `what`
    (what was awaited) and the last exception ignored.
    """
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while True:
        try:
            result = check()
            if result:
                return result
        except ignore as exc:
            last = exc
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}"
                               + (f" (last: {last!r})" if last is not None else ""))
        time.sleep(min(interval, left))


def http_get(url: str, timeout: float = 3) -> tuple[int, bytes]:
    """GET url once (no retries, no redirects): (status, body). Raises NOT_YET errors."""
    parts = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        connection.request("GET", (parts.path or "/") + (f"?{parts.query}" if parts.query else ""))
        answer = connection.getresponse()
        return answer.status, answer.read()
    finally:
        connection.close()


def ping_ok(server: "ServerProcess") -> bool:
    """The SageMaker readiness check: GET /ping answers 200."""
    return http_get(server.url + "/ping")[0] == 200


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


def session_pids(sid: int) -> list[int]:
    """The live processes of session `sid` (Linux /proc), zombies left out."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid and fields[0] != b"Z":  # fields: state ppid pgrp session ...
            pids.append(int(entry))
    return pids


class ServerProcess:
    """One server as a child process: start(), wait_ready(), stop() -> its exit code.

    argv runs the server, which answers at `url`. env is its whole environment (default:
    this process's). Its stdout and stderr go to `log_path`, kept; without one, to a
    temporary file that stop() removes after keeping its last MiB for log(). `ready(server)`
    says whether it is ready (default: GET /ping answers 200); it may raise ServerError to
    give up at once. With new_session, the server runs in a session of its own and stop()
    ends every process of that session (servers that leave their own children behind,
    such as TorchServe).

    As a context manager: started and ready on entry (stopped if it never gets there),
    stopped on exit.
    """

    def __init__(
        self,
        argv: Sequence[str],
        url: str,
        *,
        name: str | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | Path | None = None,
        log_path: str | Path | None = None,
        ready: Callable[["ServerProcess"], object] = ping_ok,
        ready_timeout_s: float = 120,
        poll_s: float = 0.1,
        new_session: bool = False,
    ) -> None:
        self.argv = [str(arg) for arg in argv]
        self.url = url.rstrip("/")
        self.name = name or Path(self.argv[0]).name
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.ready = ready
        self.ready_timeout_s = ready_timeout_s
        self.poll_s = poll_s
        self.new_session = new_session
        self.log_path = Path(log_path) if log_path is not None else None
        self.process: subprocess.Popen | None = None
        self.started_at: float | None = None
        self.ready_after: float | None = None  # seconds from start() until the ready check passed
        self._temporary_log = log_path is None
        self._log: IO[bytes] | None = None
        self._kept_log: str | None = None

    @property
    def port(self) -> int | None:
        return urllib.parse.urlsplit(self.url).port

    # --- start and wait ----------------------------------------------------------------

    def start(self) -> "ServerProcess":
        """Start the process (once); returns self."""
        if self.process is not None:
            raise RuntimeError(f"{self.name} was started already")
        if self._temporary_log:
            prefix = re.sub(r"[^A-Za-z0-9]+", "-", self.name).strip("-")
            self._log = tempfile.NamedTemporaryFile(prefix=f"{prefix}-", suffix=".log", delete=False)
            self.log_path = Path(self._log.name)
        else:
            self._log = open(self.log_path, "wb")
        self.started_at = time.monotonic()
        try:
            self.process = subprocess.Popen(
                self.argv, env=self.env, cwd=self.cwd, stdin=subprocess.DEVNULL, stdout=self._log,
                stderr=subprocess.STDOUT, start_new_session=self.new_session,
            )
        except BaseException:
            self._close_log()
            raise
        return self

    def wait_until(self, check: Callable[[], T], timeout: float, what: str) -> T:
        """wait_until(check) while the server runs: ServerError with the log's tail if it
        exits first or the time runs out."""
        if self.process is None:
            raise RuntimeError(f"{self.name} was not started")

        def alive_and_check() -> T:
            if not self.running():
                raise ServerError(f"{self.name} exited with {self.process.returncode}:\n{self.log_tail()}")
            return check()

        try:
            return wait_until(alive_and_check, timeout, what, interval=self.poll_s)
        except TimeoutError as exc:
            raise ServerError(f"{self.name}: {exc}:\n{self.log_tail()}") from None

    def wait_ready(self, timeout: float | None = None) -> "ServerProcess":
        """Until ready(self) holds (at most timeout, default ready_timeout_s seconds),
        start()ing the server first if that was not done; sets ready_after; returns self."""
        if self.process is None:
            self.start()
        timeout = self.ready_timeout_s if timeout is None else timeout
        self.wait_until(lambda: self.ready(self), timeout, "it to be ready")
        self.ready_after = time.monotonic() - self.started_at
        return self

    def start_and_wait(self, timeout: float | None = None) -> "ServerProcess":
        """start() and wait_ready(); stopped again if it never gets ready. Returns self."""
        self.start()
        try:
            return self.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise

    def __enter__(self) -> "ServerProcess":
        return self.start_and_wait()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- while it runs -----------------------------------------------------------------

    def running(self) -> bool:
        """Whether the server still runs (with new_session: any process of its session)."""
        if self.process is None:
            return False
        if self.process.poll() is None:
            return True
        return self.new_session and bool(session_pids(self.process.pid))

    def pids(self) -> list[int]:
        """The server's live processes: its session's with new_session, else its own."""
        if self.process is None:
            return []
        if self.new_session:
            return session_pids(self.process.pid)
        return [self.process.pid] if self.process.poll() is None else []

    def log(self) -> str:
        """Everything the server has logged so far (after stop(), what was kept)."""
        if self._kept_log is not None:
            return self._kept_log
        if self.log_path is None:
            return ""
        if self._log is not None and not self._log.closed:
            self._log.flush()
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 20) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def loaded_workers(self) -> int:
        """For `smvision serve`: how many times a worker has logged that its model loaded
        (restarts count too)."""
        from smvision.container.logs import MODEL_LOADED

        return self.log().count(MODEL_LOADED)

    # --- stop ----------------------------------------------------------------------------

    def stop(self, timeout_s: float = 30) -> int | None:
        """SIGTERM (a server finishes its requests in flight), SIGKILL whatever lingers after
        timeout_s; returns the exit code (None if it never started). Safe to call again."""
        try:
            if self.process is not None:
                if self.new_session:
                    self._stop_session(timeout_s)
                elif self.process.poll() is None:
                    self.process.send_signal(signal.SIGTERM)
                    try:
                        self.process.wait(timeout_s)
                    except subprocess.TimeoutExpired:
                        self.process.kill()
                        self.process.wait(5)
        finally:
            self._close_log()
        return self.process.returncode if self.process is not None else None

    def _stop_session(self, timeout_s: float) -> None:
        sid = self.process.pid
        for sig, wait_s in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 10)):
            members = session_pids(sid)
            if not members and self.process.poll() is not None:
                break
            try:
                os.killpg(sid, sig)
            except ProcessLookupError:
                pass
            for pid in members:  # members that left the process group, if any
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            try:
                wait_until(lambda: self.process.poll() is not None and not session_pids(sid), wait_s,
                           f"{self.name} to stop", ignore=())
                break
            except TimeoutError:
                continue
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            pass

    def _close_log(self) -> None:
        if self._log is None or self._log.closed:
            return
        self._log.close()
        if self._temporary_log and self.log_path is not None:
            with open(self.log_path, "rb") as f:
                f.seek(max(0, self.log_path.stat().st_size - KEPT_LOG_BYTES))
                self._kept_log = f.read().decode("utf-8", "replace")
            self.log_path.unlink(missing_ok=True)


def smvision_serve(
    model_dir: str | Path,
    env: Mapping[str, str] | None = None,
    *,
    workers: int | None = None,
    port: int | None = None,
    log_path: str | Path | None = None,
    ready_timeout_s: float = 300,
    poll_s: float = 0.2,
) -> ServerProcess:
    """`smvision serve --model-dir DIR --port PORT [--workers N]` on 127.0.0.1 (a free port
    unless given), with `env` over this process's environment, as a ServerProcess (not
    started yet).

    Ready once /ping answers 200 and, with `workers`, once every worker has logged that its
    model loaded (until then the workers that are ready take every request); a model that
    failed to load is a ServerError at once.
    """
    from smvision.container.logs import MODEL_LOADED
    from smvision.container.settings import ENV_LOG_LEVEL

    extra = dict(env or {})
    level = (extra.get(ENV_LOG_LEVEL) or os.environ.get(ENV_LOG_LEVEL) or "info").strip().lower()
    if workers and level not in ("debug", "info"):
        raise ValueError(f"smvision_serve(workers=...) counts the workers' '{MODEL_LOADED}' log lines: "
                         f"{ENV_LOG_LEVEL}={level} hides them")
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ServerError(f"--model-dir {model_dir} is not a directory (extract model.tar.gz there)")
    port = port or free_port()

    def ready(server: ServerProcess) -> bool:
        status, data = http_get(server.url + "/ping")
        if b"failed to load" in data:  # for good: no point waiting
            raise ServerError(f"{model_dir}: {error_text(status, data)}\n{server.log_tail()}")
        return status == 200 and server.loaded_workers() >= (workers or 0)

    argv = [sys.executable, "-c", SERVE, "serve", "--model-dir", str(model_dir), "--port", str(port),
            *(["--workers", str(workers)] if workers else [])]
    return ServerProcess(argv, f"http://127.0.0.1:{port}", name="smvision serve",
                         env={**os.environ, "SMVISION_BIND_HOST": "127.0.0.1", **extra},
                         log_path=log_path, ready=ready, ready_timeout_s=ready_timeout_s, poll_s=poll_s)
