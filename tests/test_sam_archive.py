"""`smvision archive build {sam-encode|sam-decode|sam}`: payloads, manifest, checkpoint checks."""

from __future__ import annotations

import json
import subprocess

import pytest
import torch

from smvision.archive.build import archive_members, read_member
from smvision.archive.sam import build_sam_archive
from smvision.models.sam.build import CheckpointError
from support import BIN


def smvision(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "smvision"), *args], capture_output=True, text=True, timeout=timeout)


def requirement_lines(archive) -> list[str]:
    text = read_member(archive, "code/requirements.txt").decode()
    return [line for line in text.splitlines() if line and not line.startswith("#")]


def test_cli_builds_a_sam_archive_from_a_checkpoint_with_both_artifacts(tiny_sam, tmp_path):
    checkpoint = tmp_path / "sam_tiny.pth"
    torch.save(tiny_sam.state_dict(), checkpoint)
    output = tmp_path / "out" / "model.tar.gz"
    result = smvision("archive", "build", "sam", "--model-type", "vit_tiny_test", "--checkpoint", str(checkpoint),
                      "--quantize", "--output", str(output))
    assert result.returncode == 0, result.stderr
    assert "RANDOMLY" not in result.stderr
    manifest = json.loads(read_member(output, "manifest.json"))
    assert manifest["kind"] == "sam" and manifest["random_weights"] is False
    assert manifest["config"] == {"model_type": "vit_tiny_test", "decoder_quantized": True}
    assert manifest["artifacts"] == {"decoder": "sam_decoder.onnx", "encoder": "sam_image_encoder.pth",
                                     "points_decoder": "sam_points_decoder.onnx"}
    assert manifest["source_checkpoint"] == "sam_tiny.pth"
    names = set(archive_members(output))
    assert {"sam_decoder.onnx", "sam_image_encoder.pth", "code/inference.py"} <= names
    assert "segment-anything==1.0" in requirement_lines(output) and "onnxruntime==1.31.1" in requirement_lines(output)
    # the encoder weights are the checkpoint's, without prompt encoder or mask decoder
    import io

    encoder = torch.load(io.BytesIO(read_member(output, "sam_image_encoder.pth")), weights_only=True)
    assert set(encoder) == {k.removeprefix("image_encoder.") for k in tiny_sam.state_dict() if k.startswith("image_encoder.")}
    assert torch.equal(encoder["patch_embed.proj.weight"], tiny_sam.image_encoder.patch_embed.proj.weight)


def test_each_kind_carries_its_own_payload_and_requirements(tmp_path):
    encode = build_sam_archive(tmp_path / "e.tar.gz", "sam-encode", "vit_tiny_test")
    decode = build_sam_archive(tmp_path / "d.tar.gz", "sam-decode", "vit_tiny_test")
    assert "sam_decoder.onnx" not in archive_members(encode) and "sam_image_encoder.pth" in archive_members(encode)
    assert "sam_image_encoder.pth" not in archive_members(decode) and "sam_decoder.onnx" in archive_members(decode)
    assert "sam_points_decoder.onnx" in archive_members(decode) and "sam_points_decoder.onnx" not in archive_members(encode)
    assert requirement_lines(encode) == ["segment-anything==1.0", "pybase64==1.5.1"]
    assert "onnxruntime==1.31.1" in requirement_lines(decode) and "pycocotools==2.0.11" in requirement_lines(decode)
    # the same seed gives the same bytes
    assert build_sam_archive(tmp_path / "e2.tar.gz", "sam-encode", "vit_tiny_test").read_bytes() == encode.read_bytes()


def test_checkpoint_of_another_type_names_what_was_expected(tiny_sam, tmp_path):
    checkpoint = tmp_path / "sam_tiny.pth"
    torch.save(tiny_sam.state_dict(), checkpoint)
    result = smvision("archive", "build", "sam-encode", "--model-type", "vit_b", "--checkpoint", str(checkpoint),
                      "--output", str(tmp_path / "m.tar.gz"))
    assert result.returncode == 2, result.stderr
    assert "is a vit_tiny_test checkpoint (ViT embed dim 32, 2 blocks)" in result.stderr
    assert "expected a SAM vit_b (ViT embed dim 768, 12 blocks; official checkpoint sam_vit_b_01ec64.pth)" in result.stderr
    assert not (tmp_path / "m.tar.gz").exists()


def test_a_file_that_is_not_a_sam_checkpoint_is_refused(tmp_path):
    other = tmp_path / "efficientdet-d0.pth"
    torch.save({"backbone_net.model._conv_stem.conv.weight": torch.zeros(1)}, other)
    with pytest.raises(CheckpointError, match=r"is not a SAM checkpoint \(dict: backbone_net"):
        build_sam_archive(tmp_path / "m.tar.gz", "sam", "vit_h", checkpoint=other)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match="could not be read as a torch state_dict"):
        build_sam_archive(tmp_path / "m.tar.gz", "sam", "vit_h", checkpoint=garbage)


def test_random_weights_are_announced_and_bad_options_are_usage_errors(tmp_path):
    result = smvision("archive", "build", "sam-encode", "--model-type", "vit_tiny_test", "--output", str(tmp_path / "m.tar.gz"))
    assert result.returncode == 0 and "RANDOMLY INITIALISED" in result.stderr
    result = smvision("archive", "build", "sam-encode", "--model-type", "vit_x", "--output", str(tmp_path / "x.tar.gz"), timeout=60)
    assert result.returncode == 2 and "vit_b" in result.stderr
    result = smvision("archive", "build", "sam-encode", "--model-type", "vit_b", "--quantize", "--output", "x", timeout=60)
    assert result.returncode == 2 and "--quantize" in result.stderr
