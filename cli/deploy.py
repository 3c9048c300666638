"""CLI wiring for the tools that take archives to SageMaker (archive push, deploy, invoke,
transform, bench). Only argument parsing and printing live here; smvision.deploy and
smvision.archive.push do the work.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from pathlib import Path
from typing import Any, Callable

ArgHandler = Callable[[argparse.Namespace], int]


def _fails_cleanly(handler: ArgHandler) -> ArgHandler:
    """Print AWS and tool errors as one line on stderr and exit 1 (no traceback)."""

    @functools.wraps(handler)
    def run(args: argparse.Namespace) -> int:
        from botocore.exceptions import BotoCoreError, ClientError

        from smvision.archive.push import PushError
        from smvision.deploy.aws import AwsError, describe_error
        from smvision.deploy.server_process import ServerError

        try:
            return handler(args)
        except (AwsError, PushError, ServerError) as exc:
            print(f"smvision: error: {exc}", file=sys.stderr)
        except ClientError as exc:
            print(f"smvision: error: {describe_error(exc)}", file=sys.stderr)
        except BotoCoreError as exc:
            print(f"smvision: error: {exc}", file=sys.stderr)
        return 1

    return run


def _key_values(pairs: list[str] | None, option: str = "--env") -> dict[str, str]:
    values = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"{option} takes KEY=VALUE, got {pair!r}")
        values[key] = value
    return values


# ---- archive push -------------------------------------------------------------------


@_fails_cleanly
def _push(args: argparse.Namespace) -> int:
    from smvision.archive.push import push_archive

    result = push_archive(args.archive, args.bucket, args.prefix, args.env, show_progress=not args.no_progress,
                          region=args.region)
    print(f"manifest sha256 {result.manifest_sha256} ({result.kind}, {result.size} bytes)", file=sys.stderr)
    print(result.uri)
    return 0


# ---- deploy -------------------------------------------------------------------------


def _serving_image(requested: str | None, region: str, instance_type: str | None) -> str:
    """--image as given (a URI, or pytorch-2.6-dlc with its warning), else our image that
    `smvision image push` put in ECR for the region and the instance's processor."""
    from smvision.deploy import aws
    from smvision.deploy.serving_image import choose_image

    return choose_image(requested, region, instance_type, sts=aws.client("sts", region),
                        registry=aws.client("ecr", region))


@_fails_cleanly
def _deploy_create(args: argparse.Namespace) -> int:
    from smvision.deploy import amis, aws, endpoints
    from smvision.deploy.autoscaling import Scaling

    ami = amis.inference_ami(args.inference_ami_version, args.instance_type, args.serverless is not None,
                             amis.sdk_inference_amis())
    if ami is None and args.inference_ami_version is None and amis.is_gpu_instance(args.instance_type):
        print(f"{args.instance_type}: {amis.describe(None)} (no InferenceAmiVersion known to serve this family; "
              "--inference-ami-version picks one)", file=sys.stderr)

    spec = endpoints.EndpointSpec(
        name=args.name,
        model_data=args.model_data,
        role=args.role,
        instance_type=args.instance_type,
        instance_count=args.instance_count,
        image=args.image,
        environment=_key_values(args.env),
        autoscale=Scaling.parse(args.autoscale, args.target_invocations) if args.autoscale else None,
        async_output=args.async_output,
        async_failure=args.async_failure,
        async_max_concurrent=args.async_max_concurrent,
        serverless_memory_mb=args.serverless,
        serverless_max_concurrency=args.serverless_max_concurrency,
        startup_timeout_s=args.startup_timeout,
        inference_ami_version=ami,
    )
    spec.validate()
    region = args.region or aws.region_name()
    spec.image = _serving_image(args.image, region, spec.instance_type)
    description = endpoints.create_or_update(
        aws.client("sagemaker", region),
        aws.client("application-autoscaling", region),
        spec,
        region,
        wait=not args.no_wait,
        timeout_s=args.timeout,
        poll_s=args.poll,
    )
    print(f"{description.get('EndpointName', spec.name)} {description.get('EndpointStatus', '')} "
          f"{description.get('EndpointConfigName', '')}".rstrip())
    return 0


@_fails_cleanly
def _deploy_delete(args: argparse.Namespace) -> int:
    from smvision.deploy import aws, endpoints

    region = args.region or aws.region_name()
    for line in endpoints.delete(aws.client("sagemaker", region), aws.client("application-autoscaling", region), args.name):
        print(f"deleted {line}")
    return 0


@_fails_cleanly
def _deploy_list(args: argparse.Namespace) -> int:
    from smvision.deploy import aws, endpoints

    rows = endpoints.list_endpoints(aws.client("sagemaker", args.region or aws.region_name()))
    if args.json:
        print(json.dumps(rows, default=str, indent=2))
        return 0
    for row in rows:
        created = row["created"].strftime("%Y-%m-%d %H:%M") if hasattr(row["created"], "strftime") else ""
        line = f"{row['name']:<32} {row['status']:<14} {row['shape']:<24} {created:<16} {row['config']}"
        print(line + (f"  ({row['failure_reason']})" if row.get("failure_reason") else ""))
    return 0


# ---- invoke -------------------------------------------------------------------------

GUESSED_TYPES = {".csv": "text/csv", ".json": "application/json", ".jsonl": "application/jsonlines",
                 ".jsonlines": "application/jsonlines", ".jpg": "image/jpeg", ".jpeg": "image/jpeg",
                 ".png": "image/png", ".tif": "image/tiff", ".tiff": "image/tiff"}


def _request_body(args: argparse.Namespace) -> tuple[bytes, str]:
    """The body and its content type from --s3, a file, or stdin."""
    from smvision.deploy.invoke import body_for_images

    if args.s3:
        if args.body:
            raise ValueError("give either a body (file or -) or --s3 images, not both")
        content_type = args.content_type or "text/csv"
        return body_for_images(args.s3, content_type, _params(args.param)), content_type
    if args.body in (None, "-"):
        if sys.stdin.isatty():
            raise ValueError("no body: give a file, - for stdin (piped), or --s3 bucket/key ...")
        body = sys.stdin.buffer.read()
        content_type = args.content_type
    else:
        path = Path(args.body)
        body = _read_body_file(path)
        content_type = args.content_type or GUESSED_TYPES.get(path.suffix.lower())
    if not content_type:
        raise ValueError("--content-type is needed (it cannot be guessed from the body's file name)")
    return body, content_type


def _read_body_file(path: Path) -> bytes:
    """The body file's bytes; ValueError (a usage error) when it is missing, a directory or unreadable."""
    if path.is_dir():
        raise ValueError(f"the body file {path} is a directory: give a file, or - for stdin")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read the body file {path}: {exc.strerror or exc}") from None


def _check_output_file(name: str | None) -> None:
    """--output must be a file name in a folder that exists: checked before the endpoint is called."""
    if name is None:
        return
    path = Path(name)
    if path.is_dir():
        raise ValueError(f"--output {path} is a directory: give a file name")
    if not path.parent.is_dir():
        raise ValueError(f"--output {path}: the folder {path.parent} does not exist")


def _params(pairs: list[str] | None) -> dict[str, Any]:
    """--param name=value, values parsed as JSON when they are (0.3 -> 0.3, true -> True)."""
    params: dict[str, Any] = {}
    for name, value in _key_values(pairs, "--param").items():
        try:
            params[name] = json.loads(value)
        except ValueError:
            params[name] = value
    return params


@_fails_cleanly
def _invoke(args: argparse.Namespace) -> int:
    from smvision.deploy import aws, invoke

    body, content_type = _request_body(args)
    _check_output_file(args.output)
    region = args.region or aws.region_name()
    runtime = aws.client("sagemaker-runtime", region)
    if args.use_async:
        s3 = aws.client("s3", region)
        prefix = args.async_input or invoke.async_input_prefix(aws.client("sagemaker", region), args.name)
        uri, payload = invoke.invoke_async(runtime, s3, args.name, body, content_type, prefix, accept=args.accept,
                                           timeout_s=args.timeout, poll_s=args.poll)
        print(f"async result {uri}", file=sys.stderr)
    else:
        payload = invoke.invoke(runtime, args.name, body, content_type, accept=args.accept).body
    if args.output:
        try:
            with open(args.output, "wb") as handle:
                handle.write(payload)
        except OSError as exc:
            print(f"smvision: error: cannot write the answer to {args.output}: {exc.strerror or exc}", file=sys.stderr)
            return 1
    else:
        sys.stdout.buffer.write(payload if payload.endswith(b"\n") else payload + b"\n")
        sys.stdout.flush()
    return 0


# ---- transform ----------------------------------------------------------------------


def _transform_options(args: argparse.Namespace) -> Any:
    from smvision.deploy.local_transform import TransformOptions

    return TransformOptions(
        content_type=args.content_type,
        accept=args.accept,
        split_type=args.split_type,
        batch_strategy=args.batch_strategy,
        max_payload_mb=args.max_payload_mb,
        max_concurrent_transforms=args.max_concurrent_transforms,
        assemble_with=args.assemble_with,
    )


@_fails_cleanly
def _transform(args: argparse.Namespace) -> int:
    if args.local:
        return _transform_local(args)
    from smvision.deploy import amis, aws, transform

    if not args.model_name and not args.model_data:
        raise ValueError("--model-name is required (or --model-data S3_URI --role ARN, or --local --model-dir DIR)")
    if args.model_name and (args.model_data or args.role or args.image):
        raise ValueError("--model-data, --role and --image make a model for the job: not with --model-name")
    region = args.region or aws.region_name()
    sm = aws.client("sagemaker", region)
    job_name = args.job_name or (f"transform-{transform.job_stamp()}" if args.model_data else None)
    spec = transform.JobSpec(args.model_name or job_name, args.input, args.output, _transform_options(args),
                             instance_type=args.instance_type, instance_count=args.instance_count,
                             job_name=job_name, environment=_key_values(args.env),
                             transform_ami_version=amis.transform_ami(args.transform_ami_version, args.instance_type))
    spec.request()  # every option checked before anything is made
    if args.model_data:  # a model of its own for the job (named as the job), with our image by default
        transform.check_model_source(args.model_data, args.role)
        image = _serving_image(args.image, region, args.instance_type)
        transform.create_model(sm, spec.model_name, args.model_data, args.role, image)
        print(f"model {spec.model_name}: {image}", file=sys.stderr)
    name = transform.create_job(sm, spec)
    print(f"transform job {name} created"
          + (f", host AMI {amis.describe(spec.transform_ami_version)}" if spec.transform_ami_version else ""),
          file=sys.stderr)
    if args.no_wait:
        print(name)
        return 0
    transform.wait_for_job(sm, name, timeout_s=args.timeout, poll_s=args.poll)
    outputs = transform.list_outputs(aws.client("s3", region), args.output)
    for uri in outputs:
        print(uri)
    if not outputs:
        print(f"transform job {name} completed and wrote no .out objects under {args.output}", file=sys.stderr)
    return 0


def _transform_local(args: argparse.Namespace) -> int:
    from smvision.deploy.local_transform import run_local_transform, transform_with_local_server

    options = _transform_options(args)
    if args.env:
        raise ValueError("--env applies to SageMaker jobs; set the variables in this shell for --local")
    if bool(args.model_dir) == bool(args.server_url):
        raise ValueError("--local needs --model-dir DIR (an extracted archive) or --server-url URL, one of them")
    if args.server_url:
        report = run_local_transform(args.server_url.rstrip("/"), args.input, args.output, options,
                                     region=args.region, show_progress=not args.no_progress)
    else:
        report = transform_with_local_server(args.model_dir, args.input, args.output, options,
                                             region=args.region, show_progress=not args.no_progress)
    return _print_transform_report(report)


def _print_transform_report(report: Any) -> int:
    """The .out URIs on stdout; settings, one row per input and what is missing on stderr.
    Exit code: 0 when every input was written, 130 after Ctrl-C, else 1."""
    for uri in report.outputs:
        print(uri)
    settings = report.settings
    if settings is not None:
        print(f"{report.inputs} input(s), {report.records} record(s), {report.requests} request(s) "
              f"({settings.batch_strategy}, MaxPayloadInMB {settings.max_payload_mb:g}, "
              f"MaxConcurrentTransforms {settings.max_concurrent})", file=sys.stderr)
    print("\n".join(report.summary()), file=sys.stderr)
    missing = report.missing()
    if report.interrupted:
        print(f"smvision: interrupted: {missing or 'every input was written'}", file=sys.stderr)
        return 130
    if missing:
        print(f"smvision: error: {missing}", file=sys.stderr)
        return 1
    return 0


# ---- bench --------------------------------------------------------------------------


@_fails_cleanly
def _bench(args: argparse.Namespace) -> int:
    from smvision.deploy import aws, bench
    from smvision.deploy.invoke import body_for_images

    if bool(args.url) == bool(args.name):
        raise ValueError("give --url (a local server) or --name (an endpoint), one of them")
    if args.s3:
        if args.body:
            raise ValueError("give either a body file or --s3 images, not both")
        content_type = args.content_type or "text/csv"
        per = max(1, args.records_per_request)
        refs = args.s3
        groups = [[refs[(start + i) % len(refs)] for i in range(per)] for start in range(0, len(refs), per)]
        bodies = [body_for_images(group, content_type, _params(args.param)) for group in groups]
    else:
        body, content_type = _request_body(args)
        bodies = [body]
    images = [bench.count_records(body, content_type) for body in bodies]
    if args.url:
        send, target = bench.http_sender(args.url, content_type, args.accept), args.url
    else:
        runtime = aws.client("sagemaker-runtime", args.region or aws.region_name())
        send, target = bench.endpoint_sender(runtime, args.name, content_type, args.accept), f"endpoint {args.name}"
    result = bench.run_bench(send, bodies, images, args.requests, args.concurrency, warmup=args.warmup)
    print(json.dumps(result.summary(), indent=2) if args.json else bench.format_result(result, target))
    if bench.all_failed(result):
        print(f"smvision: error: {bench.all_failed(result)}: no rate to report", file=sys.stderr)
        return 1
    return 0


# ---- arguments ----------------------------------------------------------------------
# Blocks that several commands share; each takes the help texts that differ.


def add_region_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--region", help="AWS region (default: AWS_DEFAULT_REGION / profile, then AWS_REGION)")


def add_wait_arguments(parser: argparse.ArgumentParser, timeout_s: float, timeout_help: str, poll_s: float) -> None:
    """--timeout (how long to wait, seconds) and the hidden --poll interval."""
    parser.add_argument("--timeout", type=float, default=timeout_s, help=timeout_help)
    parser.add_argument("--poll", type=float, default=poll_s, help=argparse.SUPPRESS)


def add_env_argument(parser: argparse.ArgumentParser, help_text: str) -> None:
    """--env K=V ... (repeatable): container environment."""
    parser.add_argument("--env", nargs="+", action="extend", metavar="K=V", help=help_text)


def add_instance_arguments(parser: argparse.ArgumentParser, type_default: str | None, type_help: str) -> None:
    parser.add_argument("--instance-type", default=type_default, help=type_help)
    parser.add_argument("--instance-count", type=int, default=1)


def add_body_arguments(parser: argparse.ArgumentParser, s3_help: str) -> None:
    """Where the request comes from: a body file (or - for stdin), or images in S3."""
    parser.add_argument("body", nargs="?", help="request body file, or - for stdin")
    parser.add_argument("--s3", nargs="+", metavar="BUCKET/KEY", help=s3_help)


def add_record_arguments(parser: argparse.ArgumentParser, param_help: str, accept_help: str | None = None) -> None:
    """How the request is sent: per-record parameters, Content-Type, Accept."""
    parser.add_argument("--param", nargs="+", action="extend", metavar="K=V", help=param_help)
    parser.add_argument("--content-type", help="default: text/csv with --s3, else from the file name")
    parser.add_argument("--accept", help=accept_help)


# ---- commands -----------------------------------------------------------------------


def add_push_command(archive_commands: Any) -> None:
    push = archive_commands.add_parser("push", help="upload model.tar.gz to s3://B/P/<env>/<UTC timestamp>/")
    push.add_argument("archive", help="model.tar.gz from `smvision archive build`")
    push.add_argument("--bucket", required=True)
    push.add_argument("--prefix", default="", help="key prefix (e.g. efficientdet-d0)")
    push.add_argument("--env", required=True, choices=("dev", "staging", "prod"))
    push.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_region_argument(push)
    push.set_defaults(run=_push)


def add_deploy_commands(commands: Any) -> None:
    deploy = commands.add_parser("deploy", help="SageMaker endpoints: create (or update), delete, list")
    deploy_commands = deploy.add_subparsers(dest="deploy_command", required=True)
    create = deploy_commands.add_parser("create", help="create an endpoint, or update it in place when it exists")
    create.add_argument("--name", required=True, help="endpoint name")
    create.add_argument("--model-data", required=True, help="s3:// URI of model.tar.gz (`smvision archive push`)")
    create.add_argument("--role", required=True, help="SageMaker execution role ARN")
    add_instance_arguments(create, None, "e.g. ml.c5.xlarge (CPU image) or ml.g4dn.xlarge (GPU image)")
    create.add_argument("--image", help="container image URI, or pytorch-2.6-dlc (past its end of support); "
                        "default: our image that `smvision image push cpu|gpu` put in ECR for the region")
    add_env_argument(create, "container environment, e.g. EFFICIENTDET_COMPOUND_COEF=0")
    create.add_argument("--autoscale", metavar="MIN:MAX", help="target tracking on invocations per instance")
    create.add_argument("--target-invocations", type=float, default=100.0,
                        help="invocations per instance per minute autoscaling holds (default 100)")
    create.add_argument("--async-output", metavar="S3_URI", help="an async endpoint writing results here")
    create.add_argument("--async-failure", metavar="S3_URI", help="where async errors go (default: with the output)")
    create.add_argument("--async-max-concurrent", type=int, help="concurrent async invocations per instance")
    create.add_argument("--serverless", type=int, metavar="MEMORY_MB", help="a serverless endpoint (1024-6144 MB)")
    create.add_argument("--serverless-max-concurrency", type=int, default=5)
    create.add_argument("--startup-timeout", type=int, default=600, help="container startup health check timeout, s")
    from smvision.deploy import amis

    create.add_argument("--inference-ami-version", metavar="NAME",
                        help="host AMI (NVIDIA driver) of a GPU endpoint, or none for the family's default "
                             f"(default on ml.{', '.join(amis.INFERENCE_DEFAULT_FAMILIES)}: the newest, "
                             f"{amis.describe(amis.newest(amis.INFERENCE_GPU_AMIS))})")
    add_wait_arguments(create, 1800, "how long to wait for InService, s", poll_s=15)
    create.add_argument("--no-wait", action="store_true", help="return once SageMaker accepted the request")
    add_region_argument(create)
    create.set_defaults(run=_deploy_create)

    delete = deploy_commands.add_parser("delete", help="remove endpoint, config(s), model(s) and autoscaling")
    delete.add_argument("--name", required=True)
    add_region_argument(delete)
    delete.set_defaults(run=_deploy_delete)

    listing = deploy_commands.add_parser("list", help="the region's endpoints")
    listing.add_argument("--json", action="store_true")
    add_region_argument(listing)
    listing.set_defaults(run=_deploy_list)


def add_invoke_command(commands: Any) -> None:
    invoke = commands.add_parser("invoke", help="call an endpoint (real-time, or --async through S3)")
    invoke.add_argument("--name", required=True, help="endpoint name")
    add_body_arguments(invoke, "images in S3, one record each")
    add_record_arguments(invoke, "per-record parameters with --s3 (JSON bodies), e.g. pred_threshold=0.3",
                         "e.g. application/json (default) or application/jsonlines")
    invoke.add_argument("--async", dest="use_async", action="store_true", help="InvokeEndpointAsync and wait")
    invoke.add_argument("--async-input", metavar="S3_URI", help="where to upload the input (default: <async output>-input/)")
    add_wait_arguments(invoke, 3600, "how long to wait for an async result, s", poll_s=5)
    invoke.add_argument("--output", help="write the answer here instead of stdout")
    add_region_argument(invoke)
    invoke.set_defaults(run=_invoke)


def add_transform_command(commands: Any) -> None:
    transform = commands.add_parser("transform", help="batch transform: a SageMaker job, or --local with its semantics")
    transform.add_argument("--input", required=True, metavar="S3_PREFIX", help="every object under it is an input")
    transform.add_argument("--output", required=True, metavar="S3_PREFIX", help="<input name>.out per input")
    transform.add_argument("--model-name", help="SageMaker model (from `deploy create`: <endpoint>-<stamp>)")
    transform.add_argument("--model-data", metavar="S3_URI", help="instead of --model-name: model.tar.gz for a model "
                           "made for the job (named as the job), with --role and --image as in `deploy create`")
    transform.add_argument("--role", help="with --model-data: SageMaker execution role ARN")
    transform.add_argument("--image", help="with --model-data: image URI or pytorch-2.6-dlc (default: our image "
                           "that `smvision image push` put in ECR for the region and --instance-type)")
    transform.add_argument("--local", action="store_true", help="run here against `smvision serve`")
    transform.add_argument("--model-dir", help="with --local: the extracted archive to serve")
    transform.add_argument("--server-url", help="with --local: a server already running (e.g. http://127.0.0.1:8080)")
    transform.add_argument("--content-type", help="ContentType of the inputs, e.g. text/csv, application/jsonlines")
    transform.add_argument("--accept", help="Accept, e.g. application/jsonlines (one line per record)")
    transform.add_argument("--split-type", choices=("None", "Line"), default="None")
    transform.add_argument("--batch-strategy", choices=("SingleRecord", "MultiRecord"),
                           help="default: what the container's /execution-parameters says")
    transform.add_argument("--max-payload-mb", type=float, help="MaxPayloadInMB (0-100; 0 = no limit; default 6)")
    transform.add_argument("--max-concurrent-transforms", type=int, help="requests in flight (default: the container's)")
    transform.add_argument("--assemble-with", choices=("None", "Line"), default="None")
    add_instance_arguments(transform, "ml.c5.xlarge", "SageMaker job instance type")
    transform.add_argument("--job-name", help="default: <model name>-<UTC stamp>")
    from smvision.deploy import amis

    transform.add_argument("--transform-ami-version", metavar="NAME",
                           help=f"host AMI (NVIDIA driver) of a GPU job: {' or '.join(amis.TRANSFORM_GPU_AMIS)}, or none "
                                f"for the family's default (default on ml.{', '.join(amis.TRANSFORM_DEFAULT_FAMILIES)}: "
                                f"{amis.newest(amis.TRANSFORM_GPU_AMIS)})")
    add_env_argument(transform, "job container environment")
    transform.add_argument("--no-progress", action="store_true")
    transform.add_argument("--no-wait", action="store_true", help="print the job name once created")
    add_wait_arguments(transform, 86400, "how long to wait for the job, s", poll_s=30)
    add_region_argument(transform)
    transform.set_defaults(run=_transform)


def add_bench_command(commands: Any) -> None:
    bench = commands.add_parser("bench", help="N requests at concurrency C: latency percentiles, images/s, errors")
    bench.add_argument("--url", help="a server, e.g. http://127.0.0.1:8080 (POST /invocations)")
    bench.add_argument("--name", help="an endpoint name (InvokeEndpoint)")
    add_body_arguments(bench, "images in S3, cycled through the requests")
    bench.add_argument("--records-per-request", type=int, default=1, help="with --s3: images per request")
    add_record_arguments(bench, "per-record parameters (JSON bodies)")
    bench.add_argument("-n", "--requests", type=int, default=20)
    bench.add_argument("-c", "--concurrency", type=int, default=1)
    bench.add_argument("--warmup", type=int, default=1, help="requests sent first and not counted")
    bench.add_argument("--json", action="store_true", help="print the numbers as JSON")
    add_region_argument(bench)
    bench.set_defaults(run=_bench)


def add_commands(commands: Any, archive_commands: Any) -> None:
    """Add archive push, deploy, invoke, transform and bench to the smvision parser."""
    add_push_command(archive_commands)
    add_deploy_commands(commands)
    add_invoke_command(commands)
    add_transform_command(commands)
    add_bench_command(commands)
