"""The one error type: an HTTP status and a message in words.

When the SageMaker inference toolkit is importable (inside the AWS PyTorch inference
image), InferenceError is a BaseInferenceToolkitError, so TorchServe answers with the same
status code our own server does.
"""

from __future__ import annotations

from http import HTTPStatus

from smvision.quoting import quote

try:  # pragma: no cover - depends on the image
    from sagemaker_inference.errors import BaseInferenceToolkitError as _Base
except ImportError:  # our own container, a laptop, tests

    class _Base(Exception):  # type: ignore[no-redef]
        """Stand-in with the toolkit's constructor when the toolkit is absent."""

        def __init__(self, status_code: int, message: str, phrase: str) -> None:
            self.status_code = status_code
            self.message = message
            self.phrase = phrase
            super().__init__(status_code, message, phrase)


class InferenceError(_Base):
    """A request that cannot be served, with the HTTP status that says why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(int(status), message, HTTPStatus(int(status)).phrase)

    @property
    def status(self) -> int:
        return self.status_code

    def __str__(self) -> str:
        return f"{self.status_code}: {self.message}"


def bad_request(message: str) -> InferenceError:
    """400: a value the caller sent is wrong."""
    return InferenceError(400, message)


def not_found(message: str) -> InferenceError:
    """404: an S3 object the caller named does not exist."""
    return InferenceError(404, message)


def too_large(message: str) -> InferenceError:
    """413: a body or an image above the configured limit."""
    return InferenceError(413, message)


def unsupported_content_type(content_type: str, supported: list[str]) -> InferenceError:
    """415: a Content-Type no record parser understands."""
    return InferenceError(
        415, f"unsupported content type {quote(content_type)}; use one of: {', '.join(supported)}"
    )


def unsupported_accept(accept: str, supported: list[str]) -> InferenceError:
    """406: an Accept type no response encoder produces."""
    return InferenceError(
        406, f"unsupported accept type {quote(accept)}; use one of: {', '.join(supported)}"
    )
