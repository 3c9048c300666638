"""Inputs that cost far more than their bytes, against a real sam-decode server on
127.0.0.1: .npz zip bombs, prompts with thousands of points, .npy headers that lie. The
worker's memory is read from /proc (its peak with VmHWM, reset through clear_refs)."""

from __future__ import annotations

import base64
import io
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
import requests

from smvision.deploy.server_process import ServerProcess, smvision_serve

MIB = 1024 * 1024
NPZ = {"Content-Type": "application/x-npz"}
POINTS_CAP = 1024  # SAM_MAX_POINTS for the server below: big enough that ONNX Runtime's arena shows


def memory_mb(pid: int, field: str) -> float:
    """A /proc/PID/status memory line (VmRSS, VmHWM) in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


def reset_peak(pid: int) -> float:
    """Reset the process's peak RSS (VmHWM) to its RSS now; return that RSS in MiB."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")
    return memory_mb(pid, "VmRSS")


def decode_server_of(model_dir: Path, log_path: Path) -> ServerProcess:
    """sam-decode served by one worker process (the server's own pid), SAM_MAX_POINTS set."""
    return smvision_serve(model_dir, env={"SAM_MAX_POINTS": str(POINTS_CAP)}, log_path=log_path).start_and_wait()


@pytest.fixture(scope="module")
def decode_server(sam_model_dir, tmp_path_factory):
    """sam-decode on the CI-sized SAM, shared by the tests that do not measure its RSS."""
    server = decode_server_of(sam_model_dir("sam-decode"), tmp_path_factory.mktemp("inputs") / "serve.log")
    try:
        yield server
    finally:
        server.stop()


def post(server: ServerProcess, timeout: float = 120, **kwargs) -> requests.Response:
    return requests.post(server.url + "/invocations", timeout=timeout, **kwargs)


def embedding_record(**prompts) -> dict:
    buffer = io.BytesIO()
    np.save(buffer, np.zeros((1, 256, 64, 64), np.float32))
    return {"image_embedding": base64.b64encode(buffer.getvalue()).decode(), "original_size": [683, 1024], **prompts}


# --- .npz zip bombs -------------------------------------------------------------------


def npz_bomb(compress_type: int, unpacked: int, declared: int = 128) -> bytes:
    """An .npz whose one member, image_embedding.npy, unpacks to `unpacked` zero bytes but
    declares `declared` in both its local header and the central directory."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compress_type, compresslevel=9) as archive:
        with archive.open("image_embedding.npy", "w") as member:
            chunk = bytes(MIB)
            for _ in range(unpacked // MIB):
                member.write(chunk)
    data = bytearray(buffer.getvalue())
    struct.pack_into("<I", data, data.index(b"PK\x03\x04") + 22, declared)  # local header: uncompressed size
    struct.pack_into("<I", data, data.index(b"PK\x01\x02") + 24, declared)  # central directory entry
    return bytes(data)


@pytest.mark.parametrize(
    "compress_type, words",
    [
        (zipfile.ZIP_BZIP2, "the .npz member 'image_embedding.npy' is compressed with bzip2"),
        (zipfile.ZIP_DEFLATED, "the .npz member 'image_embedding.npy' unpacks to more than the 128 bytes"),
    ],
)
def test_an_npz_zip_bomb_is_refused_without_unpacking_it(decode_server, compress_type, words):
    """256 MiB of zeros declared as 128 bytes: a 400 naming the member, and the worker's
    peak memory grows by far less than the bomb (it used to unpack all of it first)."""
    body = npz_bomb(compress_type, 256 * MIB)
    assert len(body) < 300_000
    pid = decode_server.process.pid
    before = reset_peak(pid)
    response = post(decode_server, data=body, headers=NPZ)
    grew = memory_mb(pid, "VmHWM") - before
    print(f"{zipfile.compressor_names[compress_type]} bomb of {len(body):,} bytes: "
          f"{response.status_code}, worker peak +{grew:.0f} MiB")
    assert response.status_code == 400, response.text
    assert words in response.json()["error"]
    assert grew < 48, f"the worker's peak memory grew by {grew:.0f} MiB"


def test_npz_members_compressed_other_than_by_numpy_are_refused(decode_server):
    """numpy.savez stores, savez_compressed deflates; bzip2, lzma and encryption are 400s."""
    arrays = {"original_size": np.array([683, 1024]), "points": np.array([[10, 10]]), "labels": np.array([1])}
    for compress_type, name in ((zipfile.ZIP_LZMA, "lzma"), (zipfile.ZIP_BZIP2, "bzip2")):
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", compress_type) as archive:
            for key, array in arrays.items():
                member = io.BytesIO()
                np.save(member, array)
                archive.writestr(key + ".npy", member.getvalue())
        response = post(decode_server, data=buffer.getvalue(), headers=NPZ)
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert f"'original_size.npy' is compressed with {name}" in error
        assert "numpy.savez" in error and "savez_compressed" in error
    stored = io.BytesIO()
    np.savez(stored, **arrays)
    data = bytearray(stored.getvalue())
    for header, flags_at in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):  # the encrypted flag, everywhere
        at = data.index(header)
        while at >= 0:
            data[at + flags_at] |= 1
            at = data.find(header, at + 4)
    response = post(decode_server, data=bytes(data), headers=NPZ)
    assert response.status_code == 400 and "is encrypted" in response.json()["error"], response.text


def test_corrupt_deflate_data_in_an_npz_is_a_400(decode_server):
    """numpy.savez_compressed bytes damaged in transit: a 400 (zlib's error was a 500)."""
    buffer = io.BytesIO()
    embedding = np.random.default_rng(0).standard_normal((1, 256, 64, 64)).astype(np.float32)
    np.savez_compressed(buffer, image_embedding=embedding)
    data = bytearray(buffer.getvalue())
    at = data.index(b"PK\x03\x04") + 30 + len("image_embedding.npy") + 200
    data[at : at + 64] = b"\xff" * 64
    response = post(decode_server, data=bytes(data), headers=NPZ)
    assert response.status_code == 400, response.text
    assert "not an .npz of plain arrays" in response.json()["error"]


# --- points per prompt ----------------------------------------------------------------


def points_record(count: int) -> dict:
    points = (np.random.default_rng(count).random((count, 2)) * [1000, 680]).round(1).tolist()
    return embedding_record(points=points, labels=[1] * count, multimask_output=False)


def test_more_points_than_the_cap_is_a_413_naming_the_setting(decode_server):
    response = post(decode_server, json=points_record(POINTS_CAP + 1))
    assert response.status_code == 413, response.text
    error = response.json()["error"]
    assert f"{POINTS_CAP + 1:,} points" in error and f"{POINTS_CAP:,}" in error and "SAM_MAX_POINTS" in error


def test_the_points_cap_is_256_by_default(monkeypatch):
    from smvision.errors import InferenceError
    from smvision.kinds.sam_prompts import parse_prompts

    monkeypatch.delenv("SAM_MAX_POINTS", raising=False)
    assert len(parse_prompts({"points": [[1, 1]] * 256, "labels": [1] * 256}, (10, 10), "record 0").points) == 256
    with pytest.raises(InferenceError) as caught:
        parse_prompts({"points": [[1, 1]] * 257, "labels": [1] * 257}, (10, 10), "record 0")
    assert caught.value.status_code == 413
    assert caught.value.message == (
        "record 0: 'points' holds 257 points, over the limit of 256 per prompt (SAM_MAX_POINTS)"
    )


def test_a_request_at_the_points_cap_gives_its_memory_back(sam_model_dir, tmp_path):
    """The decoder's memory for a prompt at the cap is returned once it is answered (ONNX
    Runtime's CPU arena kept its largest allocation for good: +370 MiB at 1,024 points).
    A server of its own: what other tests left in the allocator would hide the growth."""
    server = decode_server_of(sam_model_dir("sam-decode"), tmp_path / "serve.log")
    try:
        pid = server.process.pid
        for _ in range(2):  # first calls allocate what every call reuses
            assert post(server, json=points_record(1)).status_code == 200
        before = memory_mb(pid, "VmRSS")
        big = post(server, json=points_record(POINTS_CAP))
        assert big.status_code == 200, big.text
        assert post(server, json=points_record(1)).status_code == 200
        after = memory_mb(pid, "VmRSS")
    finally:
        server.stop()
    print(f"worker RSS {before:.0f} MiB before a {POINTS_CAP}-point prompt, {after:.0f} MiB after")
    assert after - before < 64, f"the worker kept {after - before:.0f} MiB after a {POINTS_CAP}-point prompt"


# --- .npy headers ---------------------------------------------------------------------


def npy_claiming(shape: tuple) -> str:
    """Base64 of a .npy whose header claims `shape` (float32) over 64 bytes of data."""
    text = f"{{'descr': '<f4', 'fortran_order': False, 'shape': {shape!r}, }}"
    text += " " * (117 - len(text)) + "\n"
    data = b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text.encode() + bytes(64)
    return base64.b64encode(data).decode()


@pytest.mark.parametrize("shape", [(4294967296, 4294967296), (1, 256, 64, -64), (100000, 100000)])
def test_npy_headers_that_lie_are_400s_naming_the_field(decode_server, shape):
    for field in ("image_embedding", "mask_input"):
        record = embedding_record(points=[[10, 10]], labels=[1], **{field: npy_claiming(shape)})
        response = post(decode_server, json=record)
        assert response.status_code == 400, (field, response.text)
        assert f"'{field}' is not a .npy array" in response.json()["error"]
