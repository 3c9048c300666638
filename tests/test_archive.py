"""`smvision archive build efficientdet`: contents, manifest, checks at load."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
import torch

from smvision.archive.build import archive_members, extract_archive, read_member
from smvision.manifest import ArchiveError, read_manifest
from support import BIN


def test_archive_holds_weights_code_requirements_and_manifest(d0_archive):
    names = set(archive_members(d0_archive))
    for name in ("manifest.json", "model.pth", "model.onnx", "classes.json", "code/inference.py", "code/requirements.txt",
                 "code/smvision/__init__.py", "code/smvision/kinds/efficientdet.py"):
        assert name in names, name
    assert not any("__pycache__" in n for n in names)
    manifest = json.loads(read_member(d0_archive, "manifest.json"))
    assert manifest["kind"] == "efficientdet"
    assert manifest["config"]["compound_coef"] == 0
    assert manifest["random_weights"] is True
    assert manifest["artifacts"] == {"weights": "model.pth", "onnx": "model.onnx"}  # --backend both, the default
    assert set(manifest["files"]) == names - {"manifest.json"}
    assert len(json.loads(read_member(d0_archive, "classes.json"))) == 90


def test_changed_file_is_refused_at_load(d0_archive, tmp_path):
    model_dir = extract_archive(d0_archive, tmp_path / "model")
    read_manifest(model_dir)  # intact: fine
    with open(model_dir / "classes.json", "a") as handle:
        handle.write(" ")
    with pytest.raises(ArchiveError, match="classes.json has changed"):
        read_manifest(model_dir)
    (model_dir / "model.pth").unlink()
    with pytest.raises(ArchiveError, match="model.pth is missing"):
        read_manifest(model_dir)


def test_same_inputs_give_the_same_bytes(tmp_path):
    from smvision.archive.efficientdet import build_efficientdet_archive

    first = build_efficientdet_archive(tmp_path / "a.tar.gz", 0)
    second = build_efficientdet_archive(tmp_path / "b.tar.gz", 0)
    assert first.read_bytes() == second.read_bytes()


def test_cli_builds_from_zylo117_weights_with_custom_classes(tmp_path):
    from smvision.models.efficientdet import EfficientDet, efficientdet_config

    torch.manual_seed(3)
    model = EfficientDet(efficientdet_config(0, num_classes=2))
    weights = tmp_path / "efficientdet-d0-custom.pth"
    torch.save({f"module.{k}": v for k, v in model.state_dict().items()}, weights)  # as DataParallel saves
    classes = tmp_path / "classes.txt"
    classes.write_text("cat\ndog\n")
    output = tmp_path / "out" / "model.tar.gz"
    result = subprocess.run(
        [str(BIN / "smvision"), "archive", "build", "efficientdet", "--compound-coef", "0",
         "--weights", str(weights), "--classes", str(classes), "--output", str(output)],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(output)
    assert "RANDOM" not in result.stderr
    manifest = json.loads(read_member(output, "manifest.json"))
    assert manifest["random_weights"] is False and manifest["config"]["num_classes"] == 2
    assert json.loads(read_member(output, "classes.json")) == ["cat", "dog"]
    saved = torch.load(extract_archive(output, tmp_path / "x") / "model.pth", weights_only=True)
    assert all(torch.equal(saved[k], v) for k, v in model.state_dict().items())


def test_cli_refuses_weights_of_another_model_with_a_clear_error(tmp_path):
    from smvision.models.efficientdet import EfficientDet, efficientdet_config

    weights = tmp_path / "d1.pth"
    torch.save(EfficientDet(efficientdet_config(1)).state_dict(), weights)
    result = subprocess.run(
        [str(BIN / "smvision"), "archive", "build", "efficientdet", "--compound-coef", "0",
         "--weights", str(weights), "--output", str(tmp_path / "m.tar.gz")],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 2
    assert "smvision: error:" in result.stderr
    assert not (tmp_path / "m.tar.gz").exists()


def test_random_weights_are_announced_loudly(tmp_path):
    result = subprocess.run(
        [str(BIN / "smvision"), "archive", "build", "efficientdet", "--compound-coef", "0", "--backend", "torch",
         "--output", str(tmp_path / "m.tar.gz")],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0
    assert "RANDOMLY INITIALISED" in result.stderr
    assert "model.onnx" not in archive_members(tmp_path / "m.tar.gz")


def test_bad_compound_coef_is_a_usage_error(tmp_path):
    result = subprocess.run(
        [str(BIN / "smvision"), "archive", "build", "efficientdet", "--compound-coef", "9", "--output", str(tmp_path / "m.tar.gz")],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2 and "0-8" in result.stderr


def test_compound_coef_env_guards_against_the_wrong_archive(d0_model_dir, monkeypatch):
    from smvision.kinds import load_model

    monkeypatch.setenv("EFFICIENTDET_COMPOUND_COEF", "3")
    with pytest.raises(ArchiveError, match="EFFICIENTDET_COMPOUND_COEF=3 but the archive .* holds D0"):
        load_model(d0_model_dir)
    monkeypatch.setenv("EFFICIENTDET_COMPOUND_COEF", "x")
    with pytest.raises(ValueError, match="EFFICIENTDET_COMPOUND_COEF='x' is not an integer"):
        load_model(d0_model_dir)


# --- several artifacts, per-kind requirements, old archives -----------------------------


def test_manifest_names_artifacts_by_role(d0_archive):
    manifest = json.loads(read_member(d0_archive, "manifest.json"))
    assert manifest["format_version"] == 2
    assert manifest["artifacts"] == {"weights": "model.pth", "onnx": "model.onnx"}
    assert "weights" not in manifest


def test_efficientdet_archive_carries_only_its_own_requirements(d0_archive, tmp_path):
    text = read_member(d0_archive, "code/requirements.txt").decode()
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert lines == ["efficientnet_pytorch==0.7.1", "onnxruntime==1.31.1"]  # the default archive holds model.onnx
    from smvision.archive.efficientdet import build_efficientdet_archive

    torch_only = build_efficientdet_archive(tmp_path / "torch.tar.gz", 0, backend="torch")
    text = read_member(torch_only, "code/requirements.txt").decode()
    assert [line for line in text.splitlines() if line and not line.startswith("#")] == ["efficientnet_pytorch==0.7.1"]


def test_kind_requirements_are_the_repository_pins_without_the_images_own():
    from smvision.archive.build import CODE_DIR
    from smvision.archive.requirements import KIND_REQUIREMENTS

    pins = {
        line.split("==")[0].lower(): line
        for line in (CODE_DIR.parent / "requirements.txt").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    }
    for kind, lines in KIND_REQUIREMENTS.items():
        for line in lines:
            name = line.split("==")[0].lower()
            assert pins.get(name) == line, f"{kind}: {line} is not pinned the same in requirements.txt"
            # the AWS image's own builds must never be replaced by an archive
            assert name not in ("torch", "torchvision", "numpy", "pillow", "boto3"), (kind, line)
    from smvision.kinds import KINDS

    assert set(KIND_REQUIREMENTS) == set(KINDS)


def test_format_1_archive_with_one_weights_file_still_loads(d0_model_dir, tmp_path):
    from smvision.kinds import load_model

    old = tmp_path / "model"
    shutil.copytree(d0_model_dir, old)
    for path in [old, *old.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    document = json.loads((old / "manifest.json").read_text())
    document["format_version"] = 1
    document["weights"] = document.pop("artifacts")["weights"]
    (old / "manifest.json").write_text(json.dumps(document))
    manifest = read_manifest(old)
    assert manifest.artifacts == {"weights": "model.pth"} and manifest.weights == "model.pth"
    model = load_model(old)
    assert hasattr(model, "predict")


def test_missing_artifact_role_is_a_clear_archive_error(d0_model_dir):
    manifest = read_manifest(d0_model_dir)
    with pytest.raises(ArchiveError, match=r"no 'decoder' artifact \(it has: onnx, weights\)"):
        manifest.artifact(d0_model_dir, "decoder")
