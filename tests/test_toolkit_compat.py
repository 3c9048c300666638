"""code/ unchanged under the real SageMaker PyTorch toolkit (TorchServe), natively.

For every case in devtools.toolkit_harness.CASES: build the archive with its own command, serve it
with `smvision serve` and with sagemaker-pytorch-inference 2.0.25 on TorchServe 0.12 (as
the AWS PyTorch 2.6 inference image does), send both the same requests, and check that

- the toolkit comes up (a good /invocations answer, not just /ping);
- every good request gets the same JSON from both, up to float tolerance;
- every bad request gets the same 4xx from both (e.g. pred_threshold 10 -> 400), and the
  toolkit's body carries our message;
- nothing was written outside temporary directories (repo tree, home, /etc);
- both servers stop on SIGTERM with no process left behind.

Select with `-m toolkit`. The toolkit lives in its own venv, built (or reused) by
devtools/toolkit/setup_toolkit_venv.sh; these tests skip, saying why, only if it cannot be
built here.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from devtools import toolkit_harness as h
from devtools.local_s3 import S3_ENV, LocalS3
from support import WriteWatch, compare_json, decode_reply

pytestmark = pytest.mark.toolkit


@pytest.fixture(scope="session")
def toolkit_venv() -> Path:
    try:
        return h.ensure_toolkit_venv()
    except h.ToolkitUnavailable as exc:
        pytest.skip(f"the SageMaker toolkit venv cannot be built here: {exc}")


@dataclass
class Run:
    """Everything both servers answered for one case; servers already stopped."""

    case: h.Case
    ours: dict[str, h.Reply] = field(default_factory=dict)
    theirs: dict[str, h.Reply] = field(default_factory=dict)
    ready: dict[str, float] = field(default_factory=dict)
    written: list[str] = field(default_factory=list)
    leftover: dict[str, list[int]] = field(default_factory=dict)
    logs: dict[str, str] = field(default_factory=dict)


def _serve_both(case: h.Case, venv: Path, root: Path, bucket: str) -> Run:
    run = Run(case)
    archive = h.build_archive(case, root)
    ours_dir, theirs_dir = root / "ours", root / "toolkit"
    ours_model = h.extract_archive(archive, ours_dir / "model")
    theirs_model = h.extract_archive(archive, theirs_dir / "base" / "model")
    env = {k: os.environ[k] for k in S3_ENV if k in os.environ}  # set by LocalS3
    env.update({"SAGEMAKER_MODEL_SERVER_WORKERS": "1", "SAGEMAKER_PROGRAM": "inference.py", **case.env})

    home = Path.home()
    watch = WriteWatch(
        roots=[h.REPO, home, Path("/etc")],
        # git's own files, pytest's cache (written by any pytest run in the checkout), and
        # the coding tools' state in this workspace: not written by the servers.
        ignore=[h.REPO / ".git", h.REPO / ".pytest_cache", home / ".claude"],
        marker_dir=root,
        source_trees=[h.REPO],
    )
    watch.start()
    probe = case.calls[0]
    with h.ToolkitLock():
        timeout = case.startup_timeout
        servers = {
            "ours": h.our_server(ours_model, ours_dir, env, probe, bucket, timeout).start(),
            "toolkit": h.toolkit_server(venv, theirs_model, theirs_dir, env, probe, bucket, timeout).start(),
        }
        try:
            with ThreadPoolExecutor(2) as pool:
                futures = {k: pool.submit(s.wait_ready) for k, s in servers.items()}
                for key, future in futures.items():
                    run.ready[key] = future.result().ready_after
            for call in case.calls:
                run.ours[call.name] = h.invoke(servers["ours"], call, bucket)
                run.theirs[call.name] = h.invoke(servers["toolkit"], call, bucket)
        finally:
            for key, server in servers.items():
                server.stop()
                run.leftover[key] = server.pids()
                run.logs[key] = server.log_tail(60)
    run.written = watch.written()
    return run


@pytest.fixture(scope="module", params=h.CASES, ids=lambda case: case.name)
def run(request, toolkit_venv) -> Run:
    case: h.Case = request.param
    root = Path(tempfile.mkdtemp(prefix=f"smvision-toolkit-{case.name}-"))
    try:
        with LocalS3(root / "moto.log") as s3:
            s3.put(h.BUCKET, h.bucket_objects())
            yield _serve_both(case, toolkit_venv, root, h.BUCKET)
    finally:
        h.make_writable(root)
        shutil.rmtree(root, ignore_errors=True)


def _describe(reply: h.Reply) -> str:
    return f"{reply.status} {reply.content_type} {reply.body[:400]!r}"


def test_toolkit_gives_a_good_answer(run: Run):
    assert set(run.ready) == {"ours", "toolkit"}, run.logs
    print(f"\n{run.case.name}: first good answer after ours {run.ready['ours']:.1f} s, toolkit {run.ready['toolkit']:.1f} s")


def test_same_answers_as_our_server(run: Run):
    problems = []
    for call in run.case.calls:
        if call.status != 200:
            continue
        ours, theirs = run.ours[call.name], run.theirs[call.name]
        if ours.status != 200 or theirs.status != 200:
            problems.append(f"{call.name}: ours {_describe(ours)} / toolkit {_describe(theirs)}")
            continue
        if ours.content_type.split(";")[0] != theirs.content_type.split(";")[0]:
            problems.append(f"{call.name}: content type {ours.content_type!r} != {theirs.content_type!r}")
        diffs = compare_json(decode_reply(ours, call), decode_reply(theirs, call))
        problems += [f"{call.name}: {d}" for d in diffs[:10]]
    assert not problems, "\n".join(problems)


def test_same_errors_as_our_server(run: Run):
    problems = []
    for call in run.case.calls:
        if call.status == 200:
            continue
        ours, theirs = run.ours[call.name], run.theirs[call.name]
        if (ours.status, theirs.status) != (call.status, call.status):
            problems.append(f"{call.name}: want {call.status}, ours {_describe(ours)} / toolkit {_describe(theirs)}")
            continue
        message = ours.json().get("error", "")
        if not call.same_message:
            continue
        if not message or message not in theirs.body.decode("utf-8", "replace"):
            problems.append(f"{call.name}: toolkit body lacks our message {message!r}: {theirs.body[:300]!r}")
    assert not problems, "\n".join(problems)


def test_invalid_threshold_is_400_under_the_toolkit(run: Run):
    bad = [c for c in run.case.calls if "pred_threshold\": 10" in str(c.body)]
    if not bad:
        pytest.skip(f"{run.case.name} has no pred_threshold")
    for call in bad:
        assert run.theirs[call.name].status == 400, _describe(run.theirs[call.name])
        assert b"pred_threshold" in run.theirs[call.name].body


def test_nothing_written_outside_temporary_dirs(run: Run):
    assert run.written == [], "written outside temporary directories:\n" + "\n".join(run.written[:50])


def test_both_stop_without_leftovers(run: Run):
    assert run.leftover == {"ours": [], "toolkit": []}, run.logs


# --- the toolkit venv itself ------------------------------------------------------------


def test_toolkit_venv_is_separate(toolkit_venv: Path):
    inside = toolkit_venv.resolve().is_relative_to(h.REPO)
    if inside:
        ignored = subprocess.run(["git", "-C", str(h.REPO), "check-ignore", "-q", str(toolkit_venv)])
        assert ignored.returncode == 0, f"{toolkit_venv} is inside the repository and not git-ignored"
    # the project env does not get the toolkit's packages...
    project = subprocess.run(
        [sys.executable, "-c", "import importlib.util as u; print(u.find_spec('sagemaker_inference'), u.find_spec('ts'))"],
        capture_output=True, text=True, check=True,
    )
    assert project.stdout.split() == ["None", "None"], project.stdout
    # ...and the toolkit env sees neither our installed package nor our server's deps:
    # the archive's code/ and code/requirements.txt are all it gets.
    toolkit = subprocess.run(
        [str(toolkit_venv / "bin" / "python"), "-c",
         "import importlib.util as u; print([n for n in ('smvision', 'uvicorn', 'starlette') if u.find_spec(n)])"],
        capture_output=True, text=True, check=True, cwd=tempfile.gettempdir(),
    )
    assert toolkit.stdout.strip() == "[]", toolkit.stdout


def test_toolkit_venv_setup_is_idempotent_and_fast(toolkit_venv: Path):
    start = time.monotonic()
    again = h.ensure_toolkit_venv()
    took = time.monotonic() - start
    assert again == toolkit_venv
    assert took < 10, f"re-running the setup on a built venv took {took:.1f} s"


# --- the harness's own checks ----------------------------------------------------------


def test_write_watch_sees_new_changed_and_removed(tmp_path):
    tree, outside = tmp_path / "repo", tmp_path / "home"
    (tree / "pkg").mkdir(parents=True)
    outside.mkdir()
    (tree / "pkg" / "mod.py").write_text("x = 1\n")
    (outside / "keep.txt").write_text("a")
    (outside / "gone.txt").write_text("b")
    watch = WriteWatch([tree, outside], ignore=[outside / "ignored"], marker_dir=tmp_path, source_trees=[tree])
    watch.start()
    (tree / "pkg" / "mod.py").write_text("x = 2\n")  # someone editing source: not counted
    (tree / "logs").mkdir()  # a new folder in the checkout: counted
    (outside / "keep.txt").write_text("changed")
    (outside / "gone.txt").unlink()
    (outside / "ignored").mkdir()
    (outside / "ignored" / "x").write_text("")
    assert watch.written() == sorted([str(tree / "logs"), str(outside), str(outside / "keep.txt")])


def test_compare_json_tolerates_float_noise_only():
    a = {"detections": [{"bbox": [1.0, 2.0, 3.0, 4.0], "score": 0.5, "class": "cat"}]}
    assert compare_json(a, {"detections": [{"bbox": [1.00001, 2.0, 3.0, 4.0], "score": 0.5, "class": "cat"}]}) == []
    assert compare_json(a, {"detections": [{"bbox": [1.1, 2.0, 3.0, 4.0], "score": 0.5, "class": "cat"}]})
    assert compare_json(a, {"detections": [{"bbox": [1.0, 2.0, 3.0, 4.0], "score": 0.5, "class": "dog"}]})
    assert compare_json(a, {"detections": []})
    assert compare_json({"n": 1}, {"n": True})
