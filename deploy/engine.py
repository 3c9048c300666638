"""The local container engine: docker, finch or podman, whichever is on PATH (in that order).

All three take the same command lines for what `smvision image` does: build, tag, login
with the password on stdin, push. Their output goes to stderr line by line (stdout stays
for the URI the command prints); a failure names the command and ends with its last lines.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

ENGINES = ("docker", "finch", "podman")
TAIL_LINES = 20


class EngineError(RuntimeError):
    """No engine, or an engine command failed; the message says which and why."""


def find_engine(name: str | None = None) -> "Engine":
    """The engine named, else the first of ENGINES on PATH; EngineError when there is none."""
    names = (name,) if name else ENGINES
    for candidate in names:
        path = shutil.which(candidate)
        if path:
            return Engine(candidate, path)
    if name:
        raise EngineError(f"{name} is not on PATH")
    raise EngineError(
        "no container engine on PATH (docker, finch or podman): install one, or build in AWS CodeBuild "
        "with `smvision image push cpu|gpu --remote`"
    )


@dataclass(frozen=True)
class Engine:
    """One engine's command line."""

    name: str
    path: str

    def run(self, arguments: Sequence[str], stdin: str | None = None, cwd: Path | None = None) -> None:
        """Run `<engine> arguments...`, its output on stderr; EngineError with the last lines if it fails."""
        argv = [self.path, *arguments]
        tail: deque[str] = deque(maxlen=TAIL_LINES)
        try:
            process = subprocess.Popen(argv, cwd=cwd,
                                       stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace")
        except OSError as exc:
            raise EngineError(f"cannot run {self.name}: {exc.strerror or exc}") from None
        if stdin is not None and process.stdin is not None:
            process.stdin.write(stdin)
            process.stdin.close()
        assert process.stdout is not None
        for line in process.stdout:
            tail.append(line.rstrip("\n"))
            print(line, end="", file=sys.stderr, flush=True)
        code = process.wait()
        if code != 0:
            last = "\n".join(tail)
            raise EngineError(f"`{self.name} {arguments[0]}` failed (exit {code})" + (f":\n{last}" if last else ""))

    def build(self, context: Path, dockerfile: str, tags: Sequence[str], platform: str,
              labels: Mapping[str, str]) -> None:
        arguments = ["build", "--platform", platform, "-f", str(context / dockerfile)]
        for tag in tags:
            arguments += ["-t", tag]
        for key, value in labels.items():
            arguments += ["--label", f"{key}={value}"]
        self.run([*arguments, str(context)], cwd=context)

    def tag(self, source: str, target: str) -> None:
        self.run(["tag", source, target])

    def login(self, registry: str, username: str, password: str) -> None:
        """Log in with the password on stdin (never on the command line)."""
        self.run(["login", "--username", username, "--password-stdin", registry], stdin=password + "\n")

    def push(self, reference: str) -> None:
        self.run(["push", reference])
