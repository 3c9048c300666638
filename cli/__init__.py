"""The `smvision` command: build archives and serve them.

    smvision archive build efficientdet --compound-coef N [--weights F] [--classes F]
                                [--backend torch|onnx|both] --output model.tar.gz
    smvision serve --model-dir DIR [--port N] [--workers K]
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Sequence


def _build_efficientdet(args: argparse.Namespace) -> int:
    from smvision.archive.efficientdet import build_efficientdet_archive

    path = build_efficientdet_archive(
        args.output, args.compound_coef, weights=args.weights, classes=args.classes, backend=args.backend
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

    efficientdet = kinds.add_parser("efficientdet", help="EfficientDet D0-D7x (zylo117 weights)")
    efficientdet.add_argument("--compound-coef", type=_coef, required=True, help="0-8 (8 = D7x)")
    efficientdet.add_argument("--weights", help="zylo117 checkpoint (.pth); none = random weights, for tests only")
    efficientdet.add_argument("--classes", help="class names: JSON list or one per line (default: COCO's 90)")
    efficientdet.add_argument(
        "--backend",
        choices=("torch", "onnx", "both"),
        default="both",
        help="what the archive carries: torch weights, the ONNX export, or both (default: both; "
        "SMVISION_RUNTIME picks at load)",
    )
    efficientdet.add_argument("--output", required=True, help="where to write model.tar.gz")
    efficientdet.set_defaults(run=_build_efficientdet)

    serve = commands.add_parser("serve", help="serve an extracted archive on the SageMaker contract")
    serve.add_argument("--model-dir", help="extracted archive (default $SAGEMAKER_BASE_DIR/model)")
    serve.add_argument("--port", type=int, help="port (default $SAGEMAKER_BIND_TO_PORT or 8080)")
    serve.add_argument("--workers", type=int, help="worker processes (default $SAGEMAKER_MODEL_SERVER_WORKERS or 1)")
    serve.set_defaults(run=_serve)
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


if __name__ == "__main__":
    sys.exit(main())
