"""The `smvision` command: build archives and serve them.

    smvision archive build efficientdet --compound-coef N [--weights F] [--classes F]
                                [--backend torch|onnx|both] --output model.tar.gz
    smvision archive build {sam-encode|sam-decode|sam} --model-type {vit_b|vit_l|vit_h} [--checkpoint F]
                           [--quantize] --output model.tar.gz
    smvision archive mar {sam-encode|sam-decode|sam} --model-type T [--checkpoint F] [--quantize]
                         --output DIR        (writes DIR/sam_<type>_<encode|decode|sam>.mar)
    smvision serve --model-dir DIR [--port N] [--workers K]
    smvision archive push | deploy create/delete/list | invoke | transform | bench (cli/deploy.py)
    smvision image build|push {cpu|gpu} [--remote] (cli/image.py)
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Sequence

from smvision.artifacts import DECODER
from smvision.kinds import KINDS


def _build_efficientdet(args: argparse.Namespace) -> int:
    from smvision.archive.efficientdet import build_efficientdet_archive

    path = build_efficientdet_archive(
        args.output, args.compound_coef, weights=args.weights, classes=args.classes, backend=args.backend
    )
    print(path)
    return 0


def _add_efficientdet_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The arguments of an EfficientDet archive: coefficient, weights, classes, backend, output."""
    parser.add_argument("--compound-coef", type=_coef, required=True, help="0-8 (8 = D7x)")
    parser.add_argument("--weights", help="zylo117 checkpoint (.pth); none = random weights, for tests only")
    parser.add_argument("--classes", help="class names: JSON list or one per line (default: COCO's 90)")
    parser.add_argument(
        "--backend",
        choices=("torch", "onnx", "both"),
        default="both",
        help="what the archive carries: torch weights, the ONNX export, or both (default: both; "
        "SMVISION_RUNTIME picks at load)",
    )
    parser.add_argument("--output", required=True, help="where to write model.tar.gz")
    return parser


def _add_sam_arguments(parser: argparse.ArgumentParser, kind: str, output_help: str) -> argparse.ArgumentParser:
    """The arguments of a SAM archive (`archive build` and `archive mar`): type, checkpoint,
    --quantize for the kinds with a decoder, seed, output."""
    parser.add_argument(
        "--model-type",
        required=True,
        choices=["vit_b", "vit_l", "vit_h", "vit_tiny_test"],
        help="SAM type; vit_tiny_test is the CI-sized SAM for tests and demos (random weights only)",
    )
    parser.add_argument(
        "--checkpoint", help="official SAM checkpoint (sam_vit_b_01ec64.pth, ...); none = random weights, for tests only"
    )
    if DECODER in KINDS[kind].roles:
        parser.add_argument("--quantize", action="store_true", help="dynamic int8 weights in the ONNX decoder")
    parser.add_argument("--seed", type=int, default=0, help="seed for random weights (without --checkpoint)")
    parser.add_argument("--output", required=True, help=output_help)
    parser.set_defaults(quantize=False)
    return parser


def _build_sam(args: argparse.Namespace) -> int:
    from smvision.archive.sam import build_sam_archive

    path = build_sam_archive(
        args.output, args.kind, args.model_type, checkpoint=args.checkpoint, quantize=args.quantize, seed=args.seed
    )
    print(path)
    return 0


def _build_mar(args: argparse.Namespace) -> int:
    from smvision.archive.mar import build_sam_mar

    path = build_sam_mar(
        args.output, args.kind, args.model_type, checkpoint=args.checkpoint, quantize=args.quantize, seed=args.seed
    )
    print(path)
    return 0


def _serve(args: argparse.Namespace) -> int:
    from smvision.container.serve import run

    run(model_dir=args.model_dir, port=args.port, workers=args.workers)
    return 0


def _coef(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 8:
        raise argparse.ArgumentTypeError(f"compound coefficient must be 0-8 (8 is D7x), got {value}")
    return value


def parser() -> argparse.ArgumentParser:
    """The argument parser for every smvision sub-command."""
    top = argparse.ArgumentParser(prog="smvision", description=__doc__.split("\n", 1)[0])
    commands = top.add_subparsers(dest="command", required=True)

    archive = commands.add_parser("archive", help="build model.tar.gz archives")
    archive_commands = archive.add_subparsers(dest="archive_command", required=True)
    build = archive_commands.add_parser("build", help="build a model.tar.gz")
    kinds = build.add_subparsers(dest="kind", required=True)

    # one sub-command per kind, from the registry; its row names the builder whose arguments it takes
    mar = archive_commands.add_parser("mar", help="build a SAM TorchServe .mar (sam_<type>_<kind>.mar)")
    mar_kinds = mar.add_subparsers(dest="kind", required=True)
    for kind in KINDS.values():
        if kind.builder == "efficientdet":
            _add_efficientdet_arguments(kinds.add_parser(kind.name, help=kind.help)).set_defaults(run=_build_efficientdet)
        elif kind.builder == "sam":
            sub = kinds.add_parser(kind.name, help=kind.help)
            _add_sam_arguments(sub, kind.name, "where to write model.tar.gz").set_defaults(run=_build_sam)
            # archive mar: the same SAM payload and code/ as a TorchServe .mar (the seed's format)
            sub = mar_kinds.add_parser(kind.name, help=kind.help)
            _add_sam_arguments(sub, kind.name, "folder to write sam_<type>_<kind>.mar into").set_defaults(run=_build_mar)

    serve = commands.add_parser("serve", help="serve an extracted archive on the SageMaker contract")
    serve.add_argument("--model-dir", help="extracted archive (default $SAGEMAKER_BASE_DIR/model)")
    serve.add_argument("--port", type=int, help="port (default $SAGEMAKER_BIND_TO_PORT or 8080)")
    serve.add_argument("--workers", type=int, help="worker processes (default $SAGEMAKER_MODEL_SERVER_WORKERS or 1)")
    serve.set_defaults(run=_serve)

    # archive push, deploy, invoke, transform, bench: the tools that take archives to SageMaker
    from smvision.cli.deploy import add_commands as add_deploy_commands

    add_deploy_commands(commands, archive_commands)
    # image build / push: our serving image, to ECR (cli/image.py)
    from smvision.cli.image import add_image_commands

    add_image_commands(commands)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `smvision` console script."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parser().parse_args(argv)
    try:
        return args.run(args)
    except (FileNotFoundError, ValueError) as exc:
        print(f"smvision: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("smvision: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
