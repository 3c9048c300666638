"""Shared test plumbing: comparing two servers' answers, what a run wrote, test-only HTTP
stubs; and, from devtools and the package, the local S3, photos and free ports. Servers
are started with smvision.deploy.server_process (ServerProcess, smvision_serve)."""

from __future__ import annotations

import base64
import http.server
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from devtools.local_s3 import BIN, LocalS3, skimage_photo
from smvision.deploy.server_process import free_port

if TYPE_CHECKING:
    from devtools.toolkit_harness import Call, Reply

__all__ = ["BIN", "PYTHON", "LocalS3", "free_port", "skimage_photo", "spread_scores_d0", "compare_json",
           "decode_reply", "NPY_FIELDS", "WriteWatch", "HttpStub"]

PYTHON = sys.executable


def spread_scores_d0():
    """A D0 (5 classes) at input size 256, seed 0, whose class scores spread, so that
    thresholds select a few dozen boxes; in eval mode."""
    import dataclasses

    import torch

    from smvision.models.efficientdet import EfficientDet, efficientdet_config

    torch.manual_seed(0)
    model = EfficientDet(dataclasses.replace(efficientdet_config(0, num_classes=5), input_size=256))
    with torch.no_grad():
        model.classifier.header.pointwise_conv.conv.bias.fill_(-2.0)
        model.classifier.header.pointwise_conv.conv.weight.mul_(8.0)
    return model.eval()


# ---------------------------------------------------------------------------------------
# Comparing two servers' answers (tests/test_toolkit_compat.py, tests/test_torchserve_mar.py)


def compare_json(ours: Any, theirs: Any, rel: float = 1e-4, abs_: float = 1e-4, path: str = "$") -> list[str]:
    """Differences between two JSON values, numbers equal up to tolerance."""
    if isinstance(ours, bool) or isinstance(theirs, bool):
        return [] if ours is theirs else [f"{path}: {ours!r} != {theirs!r}"]
    if isinstance(ours, (int, float)) and isinstance(theirs, (int, float)):
        if math.isclose(ours, theirs, rel_tol=rel, abs_tol=abs_):
            return []
        return [f"{path}: {ours!r} != {theirs!r}"]
    if type(ours) is not type(theirs):
        return [f"{path}: {type(ours).__name__} != {type(theirs).__name__}"]
    if isinstance(ours, dict):
        if ours.keys() != theirs.keys():
            return [f"{path}: keys {sorted(ours)} != {sorted(theirs)}"]
        return [d for key in ours for d in compare_json(ours[key], theirs[key], rel, abs_, f"{path}.{key}")]
    if isinstance(ours, list):
        if len(ours) != len(theirs):
            return [f"{path}: {len(ours)} items != {len(theirs)}"]
        return [d for i, (a, b) in enumerate(zip(ours, theirs)) for d in compare_json(a, b, rel, abs_, f"{path}[{i}]")]
    return [] if ours == theirs else [f"{path}: {ours!r} != {theirs!r}"]


#: result fields that hold base64 .npy arrays (compared by value, within tolerance)
NPY_FIELDS = ("embedding", "low_res_logits")


def decode_reply(reply: Reply, call: Call) -> Any:
    """A reply's body as JSON to compare; .npy arrays (raw or base64 fields) by value."""
    if call.accept == "application/x-npy":
        return _npy_summary(reply.body)
    document = reply.jsonlines() if call.accept == "application/jsonlines" else reply.json()
    return _arrays_by_value(document)


def _npy_summary(data: bytes) -> dict[str, Any]:
    """An array's shape, dtype and every 61st value (enough to catch any real difference)."""
    import io

    import numpy as np

    array = np.load(io.BytesIO(data), allow_pickle=False)
    return {"shape": list(array.shape), "dtype": str(array.dtype), "values": array.astype(float).ravel()[::61].tolist()}


def _arrays_by_value(document: Any) -> Any:
    if isinstance(document, list):
        return [_arrays_by_value(item) for item in document]
    if isinstance(document, dict):
        return {
            key: _npy_summary(base64.b64decode(value)) if key in NPY_FIELDS and isinstance(value, str) else _arrays_by_value(value)
            for key, value in document.items()
        }
    return document


# ---------------------------------------------------------------------------------------
# What a run wrote outside temporary directories


class WriteWatch:
    """Paths under `roots` created, modified, removed-from or chmod-ed since start().

    One `find -newer/-cnewer MARKER` walk per root after the run (a removal shows as its
    folder's new mtime). `ignore` paths are pruned. For `source_trees` (a checkout that
    people may be editing while the test runs) edits of source files and folders whose
    mtime changed are not counted; new folders and every other new or changed file are.
    """

    SOURCE_SUFFIXES = frozenset(
        ".py .pyi .md .rst .txt .cfg .toml .ini .sh .json .yml .yaml .ipynb .in".split()
    )

    def __init__(
        self,
        roots: Sequence[Path],
        ignore: Sequence[Path],
        marker_dir: Path,
        source_trees: Sequence[Path] = (),
    ) -> None:
        self.roots = [Path(r) for r in roots if Path(r).exists()]
        self.ignore = [Path(i) for i in ignore]
        self.marker = Path(marker_dir) / "write-watch.marker"
        self.source_trees = [Path(t) for t in source_trees]
        self._dirs_before: set[str] = set()

    def _dirs(self) -> set[str]:
        found = {str(tree) for tree in self.source_trees}
        for tree in self.source_trees:
            for dirpath, dirnames, _ in os.walk(tree):
                dirnames[:] = [d for d in dirnames if Path(dirpath, d) not in self.ignore]
                found.update(os.path.join(dirpath, d) for d in dirnames)
        return found

    def start(self) -> None:
        self._dirs_before = self._dirs()
        self.marker.write_text("")
        time.sleep(0.02)  # anything written from now on is strictly newer than the marker

    def _edit(self, path: str) -> bool:
        p = Path(path)
        if not any(p.is_relative_to(t) for t in self.source_trees) or "__pycache__" in p.parts:
            return False
        if p.is_dir():
            return path in self._dirs_before
        return p.suffix in self.SOURCE_SUFFIXES

    def written(self) -> list[str]:
        found: set[str] = set()
        for root in self.roots:
            argv = ["find", str(root), "-xdev"]
            for path in self.ignore:
                argv += ["-path", str(path), "-prune", "-o"]
            argv += ["(", "-newer", str(self.marker), "-o", "-cnewer", str(self.marker), ")", "-print"]
            done = subprocess.run(argv, capture_output=True, text=True, timeout=300)
            found.update(line for line in done.stdout.splitlines() if line)
        found.update(self._dirs() - self._dirs_before)  # new folders, even if emptied
        return sorted(p for p in found if not self._edit(p))


# ---------------------------------------------------------------------------------------
# Test-only HTTP endpoints on 127.0.0.1 (an S3 that refuses writes, one that records signatures)


class DenyingAws(http.server.BaseHTTPRequestHandler):
    """An AWS endpoint that refuses every request with 403 AccessDenied, as AWS does for a
    role without access; the Authorization header of each request is kept in `.seen`."""

    seen: list[str] = []

    def _refuse(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        type(self).seen.append(self.headers.get("Authorization") or "")
        body = b"<Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>"
        self.send_response(403)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_HEAD = do_GET = do_PUT = do_POST = do_DELETE = _refuse

    def log_message(self, *args: Any) -> None:
        pass


class HttpStub:
    """A ThreadingHTTPServer on 127.0.0.1 running handler, for the life of a with block;
    .url is its address."""

    def __init__(self, handler: type) -> None:
        import http.server

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> "HttpStub":
        import threading

        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
