"""CLI wiring for `smvision image build|push {cpu|gpu}`: our serving image, built locally or in
CodeBuild, pushed to ECR. Argument parsing and printing only; smvision.deploy.image_push
does the work.
"""

from __future__ import annotations

import argparse
import functools
import sys
from typing import Any

from smvision.cli.deploy import ArgHandler, _fails_cleanly, add_region_argument


def _engine_errors_cleanly(handler: ArgHandler) -> ArgHandler:
    """As cli.deploy's _fails_cleanly (AWS errors: one line, exit 1), and the same for the engine's."""
    wrapped = _fails_cleanly(handler)

    @functools.wraps(handler)
    def run(args: argparse.Namespace) -> int:
        from smvision.deploy.engine import EngineError

        try:
            return wrapped(args)
        except EngineError as exc:
            print(f"smvision: error: {exc}", file=sys.stderr)
            return 1

    return run


@_engine_errors_cleanly
def _build(args: argparse.Namespace) -> int:
    from smvision.deploy.image_push import build_local

    print(build_local(args.processor, engine_name=args.engine, context_dir=args.context))
    return 0


@_engine_errors_cleanly
def _push(args: argparse.Namespace) -> int:
    from smvision.deploy.image_push import PushOptions, push

    options = PushOptions(
        processor=args.processor, region=args.region, repository=args.repository, keep=args.keep,
        remote=args.remote, engine=args.engine, context=args.context, bucket=args.bucket,
        service_role=args.service_role, rebuild=args.rebuild, timeout_s=args.timeout, poll_s=args.poll,
    )
    if not args.remote and (args.bucket or args.service_role):
        raise ValueError("--bucket and --service-role are for --remote builds")
    print(push(options))
    return 0


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("processor", choices=("cpu", "gpu"), help="Dockerfile.cpu or Dockerfile.gpu")
    parser.add_argument("--engine", choices=("docker", "finch", "podman"),
                        help="container engine (default: the first of docker, finch, podman on PATH)")
    parser.add_argument("--context", metavar="DIR",
                        help="source checkout to build (default: the one this smvision is installed from)")


def add_image_commands(commands: Any) -> None:
    """Add `image build` and `image push` to the smvision parser."""
    from smvision.deploy.ecr import DEFAULT_KEEP, DEFAULT_REPOSITORY

    image = commands.add_parser("image", help="our serving image: build it, push it to ECR")
    image_commands = image.add_subparsers(dest="image_command", required=True)

    build = image_commands.add_parser("build", help="build the image with the local engine (smvision:<tag>)")
    _add_common(build)
    build.set_defaults(run=_build)

    push = image_commands.add_parser(
        "push", help="build the image and push it to ECR (tag <processor>-<version>-<digest>); prints its URI")
    _add_common(push)
    push.add_argument("--repository", default=DEFAULT_REPOSITORY, help=f"ECR repository (default {DEFAULT_REPOSITORY}; "
                      "created when absent)")
    push.add_argument("--keep", type=int, default=DEFAULT_KEEP,
                      help=f"a new repository's lifecycle policy keeps this many images per processor ({DEFAULT_KEEP})")
    push.add_argument("--remote", action="store_true", help="build in AWS CodeBuild (no local engine needed)")
    push.add_argument("--bucket", help="with --remote: S3 bucket for the build context "
                      "(default smvision-build-<account>-<region>, created when absent)")
    push.add_argument("--service-role", metavar="ARN", help="with --remote: the build's IAM role "
                      "(default: smvision-image-build-<region>, created when absent)")
    push.add_argument("--rebuild", action="store_true", help="build even when the tag is in ECR already")
    push.add_argument("--timeout", type=float, help="with --remote: how long to wait for the build, s "
                      "(default: CodeBuild's own limits, 120 min for cpu, 150 for gpu)")
    push.add_argument("--poll", type=float, default=10.0, help=argparse.SUPPRESS)
    add_region_argument(push)
    push.set_defaults(run=_push)
