"""One archive under `smvision serve` and under the real SageMaker PyTorch toolkit (or
TorchServe itself), natively, side by side: the harness of tests/test_toolkit_compat.py,
tests/test_torchserve_mar.py, benchmarks/toolkit_vs_ours.py and benchmarks/torchserve_mar.py.
A development tool: it needs a checkout of the repository (the toolkit venv's setup
script and launcher are devtools/toolkit/), Java 11+, and no pytest.

The toolkit side is what `serve` does in the AWS PyTorch 2.6 inference image
(sagemaker-pytorch-inference 2.0.25 on TorchServe 0.12), run without Docker from a
separate venv (devtools/toolkit/setup_toolkit_venv.sh) through devtools/toolkit/launch_toolkit.py:

- the archive is extracted to <tmp>/base/model and SAGEMAKER_BASE_DIR=<tmp>/base;
- the TorchServe config goes to a temp path (module constant torchserve.TS_CONFIG_FILE,
  /etc/sagemaker-ts.properties in the image) set by the launcher;
- the working directory is a temp dir: the toolkit puts its model store in
  ./.sagemaker/ts/models and TorchServe its logs in ./logs;
- TEMP and TMPDIR are a temp dir: TorchServe's pid file, worker sockets and the model
  copy that model_fn receives (java.io.tmpdir comes from TEMP);
- every listener is on 127.0.0.1 (TS_INFERENCE_ADDRESS, TS_MANAGEMENT_ADDRESS,
  TS_METRICS_ADDRESS, TS_GRPC_*_ADDRESS/PORT; the toolkit would bind 0.0.0.0:8080 and
  TorchServe 127.0.0.1:8082/7070/7071, which collide between two instances);
- the launcher runs in its own session: TorchServe's java frontend is re-parented to
  init when `torchserve --start` returns, so the whole server is "every process of that
  session", which is what its ServerProcess's stop() ends and rss() sums.

Every server is a smvision.deploy.server_process.ServerProcess (our_server, toolkit_server,
torchserve). Ours and the toolkit count as ready when a known-good POST /invocations
answers 200, not when /ping does: TorchServe answers /ping 200 while its worker is still
crash-looping.

To cover a new archive kind, add one Case to CASES: the command that builds its archive
and the requests to compare.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from devtools.local_s3 import skimage_photo
from smvision.deploy.server_process import ServerProcess, free_port, wait_until

REPO = Path(__file__).resolve().parent.parent
TOOLKIT_DIR = Path(__file__).resolve().parent / "toolkit"
SETUP_SCRIPT = TOOLKIT_DIR / "setup_toolkit_venv.sh"
LAUNCHER = TOOLKIT_DIR / "launch_toolkit.py"
PROJECT_BIN = Path(sys.executable).parent

BUCKET = "smvision-toolkit"
PHOTOS = ("astronaut.png", "coffee.png", "rocket.jpg")


class ToolkitUnavailable(RuntimeError):
    """The toolkit venv could not be built here (the reason is the message)."""


# ---------------------------------------------------------------------------------------
# The toolkit venv


def ensure_toolkit_venv(project_python: str | None = None, timeout: float = 1800) -> Path:
    """Build (first time, ~30-40 s plus downloads) or reuse (<1 s) the toolkit venv.

    Its torch, torchvision, numpy, pillow and boto3 are borrowed from `project_python`'s
    environment: by default this interpreter's; $SMVISION_TOOLKIT_BASE_PYTHON names another
    (e.g. a Python 3.12 venv with torch 2.6.0 / torchvision 0.21.0, as in the AWS image;
    give it its own $SMVISION_TOOLKIT_VENV too).
    """
    project_python = project_python or os.environ.get("SMVISION_TOOLKIT_BASE_PYTHON") or sys.executable
    if not SETUP_SCRIPT.is_file():
        raise ToolkitUnavailable(f"{SETUP_SCRIPT} not found: the harness runs from a checkout of the repository "
                                 "(make install)")
    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        raise ToolkitUnavailable("TorchServe needs Java 11+ (java on PATH or JAVA_HOME); none found")
    if shutil.which("bash") is None or shutil.which("flock") is None:
        raise ToolkitUnavailable("setup_toolkit_venv.sh needs bash and flock (util-linux)")
    try:
        done = subprocess.run(
            ["bash", str(SETUP_SCRIPT), project_python],
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
        )
    except subprocess.TimeoutExpired as exc:
        raise ToolkitUnavailable(f"building the toolkit venv took over {timeout:.0f} s") from exc
    if done.returncode != 0:
        tail = "\n".join((done.stderr or "").strip().splitlines()[-15:])
        raise ToolkitUnavailable(f"{SETUP_SCRIPT.name} failed ({done.returncode}):\n{tail}")
    venv = Path(done.stdout.strip().splitlines()[-1])
    if not (venv / "bin" / "torchserve").exists():
        raise ToolkitUnavailable(f"{venv} has no bin/torchserve after setup")
    return venv


# ---------------------------------------------------------------------------------------
# Requests and cases


@dataclass(frozen=True)
class Call:
    """One POST /invocations. body: a str template ({bucket}; {photo:NAME} = base64 of a
    photo) or bytes; photo: send that photo's raw bytes instead."""

    name: str
    content_type: str
    body: str | bytes = b""
    photo: str | None = None
    accept: str | None = "application/json"
    status: int = 200
    same_message: bool = True  # for errors: the toolkit's body carries our message

    def render(self, bucket: str) -> bytes:
        if self.photo is not None:
            return skimage_photo(self.photo).read_bytes()
        if isinstance(self.body, bytes):
            return self.body
        text = self.body.replace("{bucket}", bucket)
        while "{photo:" in text:
            start = text.index("{photo:")
            end = text.index("}", start)
            name = text[start + len("{photo:") : end]
            encoded = base64.b64encode(skimage_photo(name).read_bytes()).decode("ascii")
            text = text[:start] + encoded + text[end + 1 :]
        return text.encode("utf-8")

    def headers(self) -> dict[str, str]:
        headers = {"Content-Type": self.content_type}
        if self.accept:
            headers["Accept"] = self.accept
        return headers


@dataclass(frozen=True)
class Case:
    """An archive kind: how to build its model.tar.gz, and what to ask both servers.

    build: argv; "{output}" is replaced by the archive path, "{python}" by the project
    interpreter, "{smvision}" by the project's smvision console script.
    calls: the first one must answer 200; it is the readiness probe and the benchmark's
    request.
    """

    name: str
    build: tuple[str, ...]
    calls: tuple[Call, ...]
    env: Mapping[str, str] = field(default_factory=dict)
    startup_timeout: float = 240.0


def _json(obj: Any) -> str:
    return json.dumps(obj)


TOO_LARGE = b'{"image": "' + b"A" * 7_000_000 + b'"}'

EFFICIENTDET_D0 = Case(
    name="efficientdet-d0",
    build=("{smvision}", "archive", "build", "efficientdet", "--compound-coef", "0", "--output", "{output}"),
    # The AWS image has torch but no onnxruntime, so the toolkit serves the archive on torch;
    # ours does too here, so answers over thousands of near-tied random-weight scores match
    # exactly (the two runtimes are compared in tests/test_efficientdet_onnx.py).
    env={"SMVISION_RUNTIME": "torch"},
    calls=(
        Call("json-object", "application/json", _json({"bucket": "{bucket}", "key": "astronaut.png"})),
        Call(
            "json-thresholds",
            "application/json",
            _json({"bucket": "{bucket}", "key": "coffee.png", "pred_threshold": 0.6, "iou_threshold": 0.3}),
        ),
        # Random weights score every anchor about 0.0101-0.0103: these thresholds keep
        # hundreds to thousands of boxes, so NMS and the box maths are compared too.
        Call(
            "json-many-detections",
            "application/json",
            _json({"bucket": "{bucket}", "key": "astronaut.png", "pred_threshold": 0.0103, "iou_threshold": 0.5}),
        ),
        Call(
            "json-array",
            "application/json",
            _json(
                [
                    {"s3_uri": "s3://{bucket}/rocket.jpg", "pred_threshold": 0.0103},
                    {"bucket": "{bucket}", "key": "astronaut.png", "pred_threshold": 0.7},
                ]
            ),
        ),
        Call("json-base64", "application/json", _json({"image": "{photo:coffee.png}", "pred_threshold": 0.7})),
        Call("csv", "text/csv", "{bucket}/rocket.jpg\ns3://{bucket}/coffee.png\n"),
        Call(
            "jsonlines",
            "application/jsonlines",
            _json({"bucket": "{bucket}", "key": "coffee.png", "pred_threshold": 0.7})
            + "\n"
            + _json({"bucket": "{bucket}", "key": "rocket.jpg", "pred_threshold": 0.7})
            + "\n",
            accept="application/jsonlines",
        ),
        Call("raw-png", "image/png", photo="astronaut.png"),
        Call("no-accept", "application/json", _json({"bucket": "{bucket}", "key": "rocket.jpg"}), accept=None),
        Call(
            "bad-threshold",
            "application/json",
            _json({"bucket": "{bucket}", "key": "astronaut.png", "pred_threshold": 10}),
            status=400,
        ),
        Call(
            "bad-iou",
            "application/json",
            _json({"bucket": "{bucket}", "key": "astronaut.png", "iou_threshold": -1}),
            status=400,
        ),
        Call("missing-object", "application/json", _json({"bucket": "{bucket}", "key": "nope.png"}), status=404),
        Call("bad-json", "application/json", "{not json", status=400),
        Call("bad-content-type", "text/plain", "hello", status=415),
        # over SageMaker's 6 MB and TorchServe's 6,553,500 bytes: TorchServe answers 413
        # itself (its own JSON), before code/ sees the request
        Call("too-large", "application/json", TOO_LARGE, status=413, same_message=False),
        Call(
            "bad-accept",
            "application/json",
            _json({"bucket": "{bucket}", "key": "rocket.jpg"}),
            accept="application/xml",
            status=406,
        ),
    ),
)



# --- SAM (the CI-sized vit_tiny_test, random weights from seed 0) ------------------------


def _embedding_npy() -> bytes:
    """A (1, 256, 64, 64) float16 embedding, deterministic (what sam-encode would answer)."""
    import io

    import numpy as np

    buffer = io.BytesIO()
    np.save(buffer, np.random.default_rng(0).standard_normal((1, 256, 64, 64)).astype(np.float16))
    return buffer.getvalue()


EMBEDDING_KEY = "embeddings/astronaut.npy"
EMBEDDING_B64 = base64.b64encode(_embedding_npy()).decode("ascii")  # 2.8 MB: under the 6 MB limit


def bucket_objects() -> dict[str, bytes]:
    """What every case's bucket holds: the photos, and one embedding .npy for sam-decode."""
    return {**{name: skimage_photo(name).read_bytes() for name in PHOTOS}, EMBEDDING_KEY: _embedding_npy()}


def _sam_build(kind: str) -> tuple[str, ...]:
    return ("{smvision}", "archive", "build", kind, "--model-type", "vit_tiny_test", "--output", "{output}")


SAM_ENCODE = Case(
    name="sam-encode",
    build=_sam_build("sam-encode"),
    calls=(
        Call("json-object", "application/json", _json({"bucket": "{bucket}", "key": "astronaut.png"})),
        Call("npy", "application/json", _json({"s3_uri": "s3://{bucket}/rocket.jpg"}), accept="application/x-npy"),
        Call(
            "json-array-float16",
            "application/json",
            # two float16 embeddings: 5.6 MB of JSON; two float32 ones would pass the 6 MB
            # response limit (TorchServe's worker dies on that, SageMaker refuses it)
            _json([{"image": "{photo:coffee.png}", "embedding_dtype": "float16"},
                   {"bucket": "{bucket}", "key": "rocket.jpg", "embedding_dtype": "float16"}]),
        ),
        Call("csv", "text/csv", "{bucket}/rocket.jpg\n"),
        Call("raw-png", "image/png", photo="coffee.png"),
        Call("bad-dtype", "application/json", _json({"bucket": "{bucket}", "key": "rocket.jpg", "embedding_dtype": "int8"}), status=400),
        Call("unknown-parameter", "application/json", _json({"bucket": "{bucket}", "key": "rocket.jpg", "box": [1, 2, 3, 4]}), status=400),
        Call("missing-object", "application/json", _json({"bucket": "{bucket}", "key": "nope.png"}), status=404),
        Call(
            "npy-for-two-records",
            "text/csv",
            "{bucket}/rocket.jpg\n{bucket}/coffee.png\n",
            accept="application/x-npy",
            status=406,
        ),
        Call("bad-content-type", "text/plain", "hello", status=415),
    ),
)

_PROMPT = {"original_size": [512, 512], "points": [[256, 200]], "labels": [1]}

SAM_DECODE = Case(
    name="sam-decode",
    build=_sam_build("sam-decode"),
    calls=(
        Call("inline-embedding", "application/json", _json({"image_embedding": EMBEDDING_B64, **_PROMPT})),
        Call(
            "s3-embedding-box-png-logits",
            "application/json",
            _json({"image_embedding": {"s3_uri": "s3://{bucket}/" + EMBEDDING_KEY}, "original_size": [512, 512],
                   "box": [100, 100, 400, 450], "multimask_output": False, "mask_format": "png", "return_logits": True}),
        ),
        Call(
            "jsonlines-polygon",
            "application/jsonlines",
            _json({"image_embedding": {"bucket": "{bucket}", "key": EMBEDDING_KEY}, **_PROMPT, "mask_format": "polygon"}) + "\n",
            accept="application/jsonlines",
        ),
        Call("point-outside", "application/json", _json({"image_embedding": EMBEDDING_B64, **_PROMPT, "points": [[900, 1]]}), status=400),
        Call("no-original-size", "application/json", _json({"image_embedding": EMBEDDING_B64, "box": [1, 2, 3, 4]}), status=400),
        Call(
            "wrong-shape",
            "application/json",
            _json({"image_embedding": base64.b64encode(_embedding_npy()[:128]).decode(), **_PROMPT}),
            status=400,
        ),
        Call("missing-embedding", "application/json", _json({"image_embedding": {"s3_uri": "s3://{bucket}/none.npy"}, **_PROMPT}), status=404),
        Call("image-body", "image/png", photo="coffee.png", status=415),
    ),
)

SAM_ONE_CALL = Case(
    name="sam",
    build=_sam_build("sam"),
    calls=(
        Call("point", "application/json", _json({"bucket": "{bucket}", "key": "astronaut.png", "points": [[256, 200]], "labels": [1]})),
        Call(
            "box-same-image",  # a cache hit under both servers (the probe encoded it)
            "application/json",
            _json({"bucket": "{bucket}", "key": "astronaut.png", "box": [100, 100, 400, 450], "multimask_output": False}),
        ),
        Call(
            "inline-twice",
            "application/json",
            _json([{"image": "{photo:coffee.png}", "points": [[10, 10]], "labels": [1], "mask_format": "npy"}] * 2),
        ),
        Call("no-prompt", "text/csv", "{bucket}/rocket.jpg\n", status=400),
        Call("bad-label", "application/json", _json({"bucket": "{bucket}", "key": "rocket.jpg", "points": [[1, 1]], "labels": [7]}), status=400),
    ),
)

CASES: tuple[Case, ...] = (EFFICIENTDET_D0, SAM_ENCODE, SAM_DECODE, SAM_ONE_CALL)


# ---------------------------------------------------------------------------------------
# Archives


def build_archive(case: Case, workdir: Path, timeout: float = 600) -> Path:
    """Run the case's builder command; returns the model.tar.gz."""
    output = workdir / f"{case.name}.tar.gz"
    smvision = PROJECT_BIN / "smvision"
    subs = {"{output}": str(output), "{python}": sys.executable, "{smvision}": str(smvision)}
    argv = [subs.get(arg, arg) for arg in case.build]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=workdir)
    if done.returncode != 0 or not output.is_file():
        raise RuntimeError(f"archive build {argv} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return output


def extract_archive(archive: Path, model_dir: Path, read_only: bool = True) -> Path:
    """Extract as SageMaker does to /opt/ml/model; read-only as SageMaker mounts it."""
    model_dir.mkdir(parents=True)
    with tarfile.open(archive) as tar:
        tar.extractall(model_dir, filter="data")
    if read_only:
        for path in sorted(model_dir.rglob("*"), reverse=True):
            path.chmod(0o555 if path.is_dir() else 0o444)
        model_dir.chmod(0o555)
    return model_dir


def make_writable(root: Path) -> None:
    """Undo extract_archive's read-only bits so a temp dir can be removed."""
    if not root.exists():
        return
    for dirpath, dirnames, _ in os.walk(root):
        for name in dirnames:
            path = Path(dirpath, name)
            if not path.is_symlink():
                path.chmod(path.stat().st_mode | stat.S_IWUSR | stat.S_IXUSR)
    root.chmod(root.stat().st_mode | stat.S_IWUSR)


# ---------------------------------------------------------------------------------------
# Servers: one session each


def _rss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, IndexError, ValueError):
        return 0


def _uss_bytes(pid: int) -> int:
    """Unique set size: the pages only this process maps (Private_Clean + Private_Dirty),
    what its exit would give back; unlike PSS it does not depend on who else maps
    the same libraries."""
    total = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith(("Private_Clean:", "Private_Dirty:")):
                    total += int(line.split()[1]) * 1024
    except (OSError, ValueError):
        return 0
    return total


@dataclass
class Reply:
    status: int
    body: bytes
    content_type: str
    seconds: float

    def json(self) -> Any:
        return json.loads(self.body)

    def jsonlines(self) -> list[Any]:
        return [json.loads(line) for line in self.body.decode("utf-8").splitlines() if line.strip()]


def post(url: str, body: bytes, headers: Mapping[str, str], timeout: float = 120) -> Reply:
    request = urllib.request.Request(url, data=body, headers=dict(headers), method="POST")
    start = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            data = response.read()
            return Reply(response.status, data, response.headers.get("Content-Type", ""), time.perf_counter() - start)
    except urllib.error.HTTPError as err:
        data = err.read()
        return Reply(err.code, data, err.headers.get("Content-Type", ""), time.perf_counter() - start)


def post_expect_continue(url: str, body: bytes, headers: Mapping[str, str], timeout: float = 120) -> Reply:
    """POST with `Expect: 100-continue`: the body is sent only after "100 Continue", so a
    server that refuses it by its Content-Length (413) answers instead of resetting the
    connection halfway through the upload."""
    import http.client
    import socket

    parsed = urllib.parse.urlsplit(url)
    start = time.perf_counter()
    with socket.create_connection((parsed.hostname, parsed.port), timeout=timeout) as sock:
        head = [f"POST {parsed.path} HTTP/1.1", f"Host: {parsed.netloc}", f"Content-Length: {len(body)}",
                "Expect: 100-continue", "Connection: close"]
        head += [f"{key}: {value}" for key, value in headers.items()]
        sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode("latin-1"))
        reader = sock.makefile("rb")
        response = http.client.HTTPResponse(sock)
        response.fp = reader
        first = reader.peek(12)[:12] if hasattr(reader, "peek") else b""
        if first.startswith(b"HTTP/1.1 100"):
            while reader.readline() not in (b"\r\n", b"\n", b""):
                pass  # skip the interim response
            sock.sendall(body)
        response.begin()
        data = response.read()
        return Reply(response.status, data, response.getheader("Content-Type", ""), time.perf_counter() - start)


def invoke(server: ServerProcess, call: Call, bucket: str, timeout: float = 120) -> Reply:
    """POST /invocations of `call` to the server (bodies over 1 MiB with Expect: 100-continue)."""
    body = call.render(bucket)
    if len(body) > 2**20:
        return post_expect_continue(server.url + "/invocations", body, call.headers(), timeout)
    return post(server.url + "/invocations", body, call.headers(), timeout)


def answers(probe: Call, bucket: str) -> Callable[[ServerProcess], bool]:
    """A readiness check: `probe` gets a 200 (a good answer, not just /ping)."""
    return lambda server: invoke(server, probe, bucket, timeout=60).status == 200


def rss(server: ServerProcess) -> int:
    """Resident memory of every process of the server (its session), in bytes."""
    return sum(_rss_bytes(pid) for pid in server.pids())


def uss(server: ServerProcess) -> int:
    """Private memory (USS) of every process of the server, in bytes."""
    return sum(_uss_bytes(pid) for pid in server.pids())


def _base_env(extra: Mapping[str, str]) -> dict[str, str]:
    keep = ("HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "JAVA_HOME", "SSL_CERT_FILE")
    env = {key: os.environ[key] for key in keep if key in os.environ}
    env.update(
        {
            "PYTHONUNBUFFERED": "1",
            "PYTHONDONTWRITEBYTECODE": "1",  # as in the AWS image
            "PIP_DISABLE_PIP_VERSION_CHECK": "1",
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(os.cpu_count() or 1)),
        }
    )
    env.update(extra)
    return env


def our_server(model_dir: Path, workdir: Path, env: Mapping[str, str], probe: Call, bucket: str,
               timeout: float = 240, port: int | None = None) -> ServerProcess:
    """`smvision serve --model-dir DIR --port N` from the project environment, in a session
    of its own; ready once `probe` answers 200 (not started yet)."""
    port = port or free_port()
    tmp = workdir / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    full_env = _base_env(
        {"PATH": f"{PROJECT_BIN}:/usr/local/bin:/usr/bin:/bin", "TMPDIR": str(tmp), "TEMP": str(tmp), **env}
    )
    argv = [PROJECT_BIN / "smvision", "serve", "--model-dir", str(model_dir), "--port", str(port)]
    return ServerProcess(argv, f"http://127.0.0.1:{port}", name="smvision serve", env=full_env, cwd=workdir,
                         log_path=workdir / "serve.log", ready=answers(probe, bucket), ready_timeout_s=timeout,
                         poll_s=0.25, new_session=True)


def toolkit_server(venv: Path, model_dir: Path, workdir: Path, env: Mapping[str, str], probe: Call, bucket: str,
                   timeout: float = 240, port: int | None = None) -> ServerProcess:
    """sagemaker_pytorch_serving_container.serving.main() on TorchServe, from the toolkit
    venv, in a session of its own; ready once `probe` answers 200 (not started yet).

    model_dir must be <base>/model: the toolkit derives it from SAGEMAKER_BASE_DIR.
    """
    if model_dir.name != "model":
        raise ValueError("the toolkit reads the model from $SAGEMAKER_BASE_DIR/model")
    others = other_torchserve_pids()
    if others:
        raise RuntimeError(
            f"TorchServe already runs here (pids {others}); the toolkit refuses a second one "
            "('multiple ts model servers are not supported'): stop it first"
        )
    port = port or free_port()
    tmp, cwd = workdir / "tmp", workdir / "cwd"
    tmp.mkdir(parents=True, exist_ok=True)
    cwd.mkdir(parents=True, exist_ok=True)
    loopback = "http://127.0.0.1"
    full_env = _base_env(
        {
            "PATH": f"{venv / 'bin'}:/usr/local/bin:/usr/bin:/bin",
            "VIRTUAL_ENV": str(venv),
            "SAGEMAKER_BASE_DIR": str(model_dir.parent),
            "SAGEMAKER_BIND_TO_PORT": str(port),
            "SMVISION_TS_CONFIG_FILE": str(tmp / "sagemaker-ts.properties"),
            "TEMP": str(tmp),
            "TMPDIR": str(tmp),
            "LOG_LOCATION": str(cwd / "logs"),
            "METRICS_LOCATION": str(cwd / "logs"),
            "PIP_CACHE_DIR": str(tmp / "pip-cache"),
            "TS_INFERENCE_ADDRESS": f"{loopback}:{port}",
            "TS_MANAGEMENT_ADDRESS": f"{loopback}:{port}",
            "TS_METRICS_ADDRESS": f"{loopback}:{free_port()}",
            "TS_GRPC_INFERENCE_ADDRESS": "127.0.0.1",
            "TS_GRPC_MANAGEMENT_ADDRESS": "127.0.0.1",
            "TS_GRPC_INFERENCE_PORT": str(free_port()),
            "TS_GRPC_MANAGEMENT_PORT": str(free_port()),
            **env,
        }
    )
    argv = [venv / "bin" / "python", LAUNCHER]
    return ServerProcess(argv, f"http://127.0.0.1:{port}", name="toolkit (TorchServe)", env=full_env, cwd=cwd,
                         log_path=workdir / "toolkit.log", ready=answers(probe, bucket), ready_timeout_s=timeout,
                         poll_s=0.25, new_session=True)


# ---------------------------------------------------------------------------------------
# One lock for every toolkit server started through this module: the toolkit refuses to
# start when it sees another TorchServe frontend on the machine ("multiple ts model
# servers are not supported": it scans all processes for org.pytorch.serve.ModelServer).


class ToolkitLock:
    """An exclusive lock on a file in the temp folder, held for a with block."""

    def __init__(self, timeout: float = 900) -> None:
        self.path = Path(tempfile.gettempdir()) / "smvision-toolkit-server.lock"
        self.timeout = timeout
        self._file = None

    def __enter__(self) -> "ToolkitLock":
        self._file = open(self.path, "a")

        def locked() -> bool:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)  # BlockingIOError while another holds it
            return True

        try:
            wait_until(locked, self.timeout, f"{self.path}, held by another toolkit server", interval=0.5,
                       ignore=(BlockingIOError,))
        except BaseException:
            self._file.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        if self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()


def other_torchserve_pids() -> list[int]:
    """TorchServe frontends already running on this machine (the toolkit allows one)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if b"org.pytorch.serve.ModelServer" in f.read():
                        found.append(int(entry))
            except OSError:
                pass
    return found


# ---------------------------------------------------------------------------------------
# TorchServe itself (from the toolkit venv) serving `smvision archive mar` files. One
# TorchServe at a time: hold ToolkitLock() while it runs.

MODEL_TYPE = "vit_tiny_test"


def build_mar(kind: str, output: Path, *extra: str) -> subprocess.CompletedProcess:
    """`smvision archive mar KIND --model-type vit_tiny_test --output OUTPUT [extra...]`."""
    argv = [str(PROJECT_BIN / "smvision"), "archive", "mar", kind, "--model-type", MODEL_TYPE, "--output", str(output), *extra]
    return subprocess.run(argv, capture_output=True, text=True, timeout=600)


def torchserve(
    venv: Path, model_store: Path, workdir: Path, env: dict[str, str], settings: dict[str, str] | None = None
) -> ServerProcess:
    """`torchserve --foreground` with the .mar files of model_store loaded at start, every
    listener on 127.0.0.1, its temp files, logs and config under workdir, in a session of
    its own (not started yet). Ready when it listens; each model with wait_model().

    settings: more config.properties lines (e.g. {"decode_input_request": "false"}).
    """
    others = other_torchserve_pids()
    if others:
        raise RuntimeError(f"TorchServe already runs here (pids {others})")
    port = free_port()
    tmp, cwd = workdir / "tmp", workdir / "cwd"
    tmp.mkdir(parents=True)
    cwd.mkdir(parents=True)
    config = workdir / "config.properties"
    config.write_text(
        "\n".join(
            [
                f"inference_address=http://127.0.0.1:{port}",
                f"management_address=http://127.0.0.1:{free_port()}",
                f"metrics_address=http://127.0.0.1:{free_port()}",
                "grpc_inference_address=127.0.0.1",
                "grpc_management_address=127.0.0.1",
                f"grpc_inference_port={free_port()}",
                f"grpc_management_port={free_port()}",
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
    full_env = _base_env(
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
    argv = [venv / "bin" / "torchserve", "--start", "--foreground", "--ncs", "--ts-config", config]
    return ServerProcess(argv, f"http://127.0.0.1:{port}", name="torchserve", env=full_env, cwd=cwd,
                         log_path=workdir / "torchserve.log", poll_s=0.5, new_session=True)


def predict(server: ServerProcess, name: str, call: Call, bucket: str) -> Reply:
    """POST /predictions/NAME of `call` to TorchServe."""
    return post(f"{server.url}/predictions/{name}", call.render(bucket), call.headers())


def wait_model(server: ServerProcess, name: str, probe: Call, bucket: str, timeout: float) -> None:
    """Until TorchServe's model `name` answers the probe with 200 (its worker loaded)."""
    server.wait_until(lambda: predict(server, name, probe, bucket).status == 200, timeout, f"{name} to answer 200")
