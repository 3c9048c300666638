"""`smvision archive mar`: the SAM .mar files served by TorchServe itself, natively.

Builds sam_vit_tiny_test_decode.mar and sam_vit_tiny_test_encode.mar with the CLI, starts
one TorchServe 0.12 (from the toolkit test venv, devtools/toolkit/setup_toolkit_venv.sh)
with both registered at start, and `smvision serve` on each .mar's extracted contents;
then sends both the same requests (devtools.toolkit_harness's SAM_DECODE and SAM_ENCODE calls)
and checks that answers, statuses (a bad prompt is a 400) and error bodies are the same.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from devtools import toolkit_harness as h
from devtools.local_s3 import S3_ENV, LocalS3
from devtools.toolkit_harness import MODEL_TYPE, build_mar
from support import compare_json, decode_reply

pytestmark = pytest.mark.toolkit

KINDS = {"sam-decode": h.SAM_DECODE, "sam-encode": h.SAM_ENCODE}


@dataclass
class Served:
    """What each server answered, by kind and call name; servers already stopped."""

    mars: dict[str, Path] = field(default_factory=dict)
    members: dict[str, list[str]] = field(default_factory=dict)
    ours: dict[str, dict[str, h.Reply]] = field(default_factory=dict)
    theirs: dict[str, dict[str, h.Reply]] = field(default_factory=dict)
    leftover: list[int] = field(default_factory=list)


@pytest.fixture(scope="module")
def served() -> Served:
    try:
        venv = h.ensure_toolkit_venv()
    except h.ToolkitUnavailable as exc:
        pytest.skip(f"TorchServe's venv cannot be built here: {exc}")
    root = Path(tempfile.mkdtemp(prefix="smvision-mar-"))
    result = Served()
    try:
        store = root / "store"
        for kind in KINDS:
            done = build_mar(kind, store)
            assert done.returncode == 0, done.stderr[-3000:]
            result.mars[kind] = Path(done.stdout.strip().splitlines()[-1])
        with LocalS3(root / "moto.log") as s3:
            s3.put(h.BUCKET, h.bucket_objects())
            env = {k: os.environ[k] for k in S3_ENV if k in os.environ}
            ours = {}
            for kind, mar in result.mars.items():
                model_dir = root / kind / "model"
                with zipfile.ZipFile(mar) as archive:
                    result.members[kind] = archive.namelist()
                    archive.extractall(model_dir)
                ours[kind] = h.our_server(model_dir, root / kind, {**env, "SAGEMAKER_MODEL_SERVER_WORKERS": "1"},
                                          KINDS[kind].calls[0], h.BUCKET, 240).start()
            with h.ToolkitLock():
                torchserve = h.torchserve(venv, store, root / "torchserve", env).start()
                try:
                    for kind, case in KINDS.items():
                        name = result.mars[kind].stem
                        ours[kind].wait_ready()
                        h.wait_model(torchserve, name, case.calls[0], h.BUCKET, 240)
                        result.ours[kind] = {c.name: h.invoke(ours[kind], c, h.BUCKET) for c in case.calls}
                        result.theirs[kind] = {c.name: h.predict(torchserve, name, c, h.BUCKET) for c in case.calls}
                finally:
                    torchserve.stop()
                    result.leftover = torchserve.pids()
                    for server in ours.values():
                        server.stop()
        yield result
    finally:
        h.make_writable(root)
        shutil.rmtree(root, ignore_errors=True)


def _describe(reply: h.Reply) -> str:
    return f"{reply.status} {reply.content_type} {reply.body[:300]!r}"


@pytest.mark.parametrize("kind", list(KINDS))
def test_mar_is_named_by_type_and_kind_and_holds_the_archive(served: Served, kind: str):
    mar = served.mars[kind]
    assert mar.name == f"sam_{MODEL_TYPE}_{kind.removeprefix('sam-')}.mar"
    members = set(served.members[kind])
    payload = {"sam-decode": "sam_decoder.onnx", "sam-encode": "sam_image_encoder.pth"}[kind]
    for name in ("manifest.json", payload, "code/inference.py", "code/requirements.txt",
                 "code/smvision/torchserve_handler.py", "torchserve_handler.py", "MAR-INF/MANIFEST.json"):
        assert name in members, sorted(members)


@pytest.mark.parametrize("kind", list(KINDS))
def test_torchserve_gives_the_same_answers_as_our_server(served: Served, kind: str):
    problems = []
    for call in KINDS[kind].calls:
        ours, theirs = served.ours[kind][call.name], served.theirs[kind][call.name]
        if (ours.status, theirs.status) != (call.status, call.status):
            problems.append(f"{call.name}: want {call.status}, ours {_describe(ours)} / torchserve {_describe(theirs)}")
            continue
        if ours.content_type.split(";")[0] != theirs.content_type.split(";")[0]:
            problems.append(f"{call.name}: content type {ours.content_type!r} != {theirs.content_type!r}")
        if call.status == 200:
            diffs = compare_json(decode_reply(ours, call), decode_reply(theirs, call))
            problems += [f"{call.name}: {d}" for d in diffs[:10]]
        elif ours.json() != theirs.json():  # the same {"error": ..., "status": N}
            problems.append(f"{call.name}: error body {ours.body[:300]!r} != {theirs.body[:300]!r}")
    assert not problems, "\n".join(problems)


def test_a_bad_prompt_is_a_400_from_torchserve(served: Served):
    reply = served.theirs["sam-decode"]["point-outside"]
    assert reply.status == 400, _describe(reply)
    assert json.loads(reply.body)["status"] == 400
    assert "point" in json.loads(reply.body)["error"]


def test_torchserve_stops_without_leftovers(served: Served):
    assert served.leftover == []


def test_missing_checkpoint_fails_before_writing(tmp_path):
    output = tmp_path / "out"
    done = build_mar("sam-decode", output, "--checkpoint", str(tmp_path / "sam_vit_b_01ec64.pth"))
    assert done.returncode != 0
    assert "sam_vit_b_01ec64.pth" in done.stderr and "does not exist" in done.stderr
    assert not output.exists()


def test_mar_names_follow_type_and_kind():
    from smvision.archive.mar import mar_name

    assert [mar_name(kind, "vit_b") for kind in ("sam-encode", "sam-decode", "sam")] == [
        "sam_vit_b_encode", "sam_vit_b_decode", "sam_vit_b_sam"]
    with pytest.raises(ValueError, match="efficientdet"):
        mar_name("efficientdet", "vit_b")
