"""moto's standalone server plus the two SageMaker behaviours moto 5.2.5 lacks.

Run as `python tests/moto_sagemaker.py -H 127.0.0.1 -p PORT` (same arguments as
moto_server). Added, in the server process only:

- UpdateEndpoint: the endpoint moves to the new endpoint config (moto answers 500).
- A failing container: an endpoint whose model has the environment variable
  MOTO_FAILURE_REASON is created Failed, with that FailureReason, as SageMaker reports
  an image that never passes /ping.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Any, Iterator

FAILURE_VARIABLE = "MOTO_FAILURE_REASON"
AWS_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


@contextlib.contextmanager
def running(log_path: Path) -> Iterator[str]:
    """This server on a free port; while open, boto3 in this process sends every service
    (SageMaker, Application Auto Scaling, the runtime, S3) to it. Yields its URL."""
    import pytest

    from devtools.local_s3 import moto_ready
    from smvision.deploy.server_process import ServerProcess, free_port

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = ServerProcess([sys.executable, __file__, "-H", "127.0.0.1", "-p", str(port)], url, name="moto server",
                           log_path=log_path, ready=moto_ready, ready_timeout_s=30)
    with server, pytest.MonkeyPatch.context() as env:
        for name, value in {"AWS_ENDPOINT_URL": url, "AWS_ENDPOINT_URL_S3": url, **AWS_ENV}.items():
            env.setenv(name, value)
        env.delenv("AWS_REGION", raising=False)
        env.delenv("AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME", raising=False)
        yield url


def _patch_moto() -> None:
    """Add UpdateEndpoint and failing containers to moto's SageMaker, in this process."""
    from moto.sagemaker.exceptions import ValidationError
    from moto.sagemaker.models import SageMakerModelBackend
    from moto.sagemaker.responses import SageMakerResponse
    from moto.core.common_types import TYPE_RESPONSE
    from moto.core.utils import utcnow

    def _failure_reason(backend: SageMakerModelBackend, variants: list[dict[str, Any]]) -> str | None:
        for variant in variants:
            model = backend._models.get(variant.get("ModelName"))
            environment = (getattr(model, "primary_container", None) or {}).get("Environment") or {}
            if FAILURE_VARIABLE in environment:
                return environment[FAILURE_VARIABLE]
        return None

    _create_endpoint = SageMakerModelBackend.create_endpoint

    def create_endpoint(self: SageMakerModelBackend, endpoint_name: str, endpoint_config_name: str, tags: Any) -> Any:
        endpoint = _create_endpoint(self, endpoint_name, endpoint_config_name, tags)
        reason = _failure_reason(self, self.describe_endpoint_config(endpoint_config_name)["ProductionVariants"])
        if reason:
            endpoint.endpoint_status = "Failed"
            endpoint.failure_reason = reason
        return endpoint

    def update_endpoint(self: SageMakerModelBackend, endpoint_name: str, endpoint_config_name: str) -> str:
        endpoint = self.endpoints.get(endpoint_name)
        if endpoint is None:
            raise ValidationError(message=f"Could not find endpoint '{endpoint_name}'.")
        try:
            config = self.describe_endpoint_config(endpoint_config_name)
        except KeyError:
            raise ValidationError(message=f"Could not find endpoint configuration '{endpoint_config_name}'.") from None
        reason = _failure_reason(self, config["ProductionVariants"])
        if reason:  # SageMaker rolls a failed update back: InService on the old config
            endpoint.failure_reason = reason
        else:
            endpoint.endpoint_config_name = endpoint_config_name
            endpoint.production_variants = endpoint._process_production_variants(config["ProductionVariants"])
            endpoint.failure_reason = None
        endpoint.last_modified_time = utcnow()
        return endpoint.arn

    def update_endpoint_response(self: SageMakerResponse) -> TYPE_RESPONSE:
        import json

        arn = self.sagemaker_backend.update_endpoint(self._get_param("EndpointName"), self._get_param("EndpointConfigName"))
        return 200, {}, json.dumps({"EndpointArn": arn})

    SageMakerModelBackend.create_endpoint = create_endpoint
    SageMakerModelBackend.update_endpoint = update_endpoint
    SageMakerResponse.update_endpoint = update_endpoint_response


if __name__ == "__main__":
    from moto.server import main

    _patch_moto()
    main(sys.argv[1:])
