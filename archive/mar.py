"""`smvision archive mar`: the SAM archives as TorchServe .mar files (the seed's format).

The .mar is packed from the very stage `smvision archive build` packs into
model.tar.gz (archive/sam.py writes it: payload, code/, manifest.json), with
torch-model-archiver: the stage's files sit at the .mar's root, and
code/smvision/torchserve_handler.py is the handler, which runs the same entry script
(code/inference.py) and kinds as every other server. code/requirements.txt is the .mar's
requirements file (TorchServe installs it when install_py_dep_per_model=true).

Names: sam_<model type>_<kind without "sam-">.mar, e.g. sam_vit_b_encode.mar,
sam_vit_b_decode.mar, sam_vit_b_sam.mar (the one-call kind); TorchServe serves each under
that name: POST /predictions/sam_vit_b_decode.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from smvision.archive.sam import SAM_KINDS, build_sam_archive

HANDLER = Path("code") / "smvision" / "torchserve_handler.py"
REQUIREMENTS = Path("code") / "requirements.txt"
MAR_VERSION = "1.0"


def mar_name(kind: str, model_type: str) -> str:
    """The .mar's model name (its file name without .mar): sam_<type>_<kind short name>."""
    if kind not in SAM_KINDS:
        raise ValueError(f"unknown SAM archive kind {kind!r}; use one of {', '.join(SAM_KINDS)}")
    short = kind.removeprefix("sam-")
    return f"sam_{model_type}_{short}"


def build_sam_mar(
    output_dir: str | Path,
    kind: str,
    model_type: str,
    checkpoint: str | Path | None = None,
    quantize: bool = False,
    seed: int = 0,
) -> Path:
    """Write <output_dir>/sam_<type>_<kind>.mar; returns its path.

    Same arguments as build_sam_archive. A checkpoint that does not exist fails before
    anything is written (the output folder included); an existing .mar is replaced.
    """
    name = mar_name(kind, model_type)
    if checkpoint is not None and not Path(checkpoint).is_file():
        raise FileNotFoundError(f"checkpoint {checkpoint} does not exist: no .mar written")
    output = Path(output_dir) / f"{name}.mar"
    return build_sam_archive(
        output, kind, model_type, checkpoint=checkpoint, quantize=quantize, seed=seed, packer=pack_mar
    )


def pack_mar(stage: Path, output: Path) -> None:
    """torch-model-archiver: the stage's files at the .mar's root, our handler, the kind's
    requirements. The model name is output's stem."""
    try:
        from model_archiver.model_archiver_config import ModelArchiverConfig
        from model_archiver.model_packaging import package_model
        from model_archiver.model_packaging_utils import ModelExportUtils
    except ImportError as exc:
        raise FileNotFoundError(
            "torch-model-archiver is not installed: pip install torch-model-archiver==0.12.0"
        ) from exc

    config = ModelArchiverConfig(
        model_name=output.stem,
        handler=str(stage / HANDLER),
        version=MAR_VERSION,
        extra_files=str(stage),
        export_path=str(output.parent),
        requirements_file=str(stage / REQUIREMENTS),
        force=True,
    )
    # torch-model-archiver copies into <tempdir>/<model name>, then removes it: a private
    # tempdir keeps two builds of the same name (parallel tests, two users) apart
    with tempfile.TemporaryDirectory(prefix="smvision-mar-") as private:
        saved, tempfile.tempdir = tempfile.tempdir, private
        try:
            package_model(config, manifest=ModelExportUtils.generate_manifest_json(config))
        finally:
            tempfile.tempdir = saved
    if not output.is_file():
        raise RuntimeError(f"torch-model-archiver did not write {output}")
