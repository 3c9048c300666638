"""Run an unchanged SageMaker PyTorch entry script (inference.py style).

The semantics are those of the SageMaker inference toolkit (sagemaker-inference and
sagemaker-pytorch-inference): the module SAGEMAKER_PROGRAM is imported from
``<model dir>/code`` (put first on sys.path); ``model_fn(model_dir)`` runs once per
worker; then either ``transform_fn(model, body, content_type, accept)`` or
``output_fn(predict_fn(input_fn(body, content_type), model), accept)`` (a script that
defines transform_fn beside any of the other three is refused, as the toolkit refuses
it), each with an
optional trailing ``context`` argument (we pass None).  JSON, CSV and JSON Lines bodies
arrive as str, all others as bytes.  A missing or ``*/*`` Accept becomes the default
accept.  output_fn/transform_fn may return bytes, str, or ``(body, content_type)``.

Nothing here writes into the model dir (it may be read-only): bytecode for the entry
script is not cached next to it.

No torch here: entry scripts import what they need.
"""

from __future__ import annotations

import importlib
import inspect
import json
import logging
import os
import sys
from collections.abc import Callable
from typing import Any

from smvision.errors import InferenceError
from smvision.inflight import stage
from smvision.quoting import quote
from smvision.records import media_type

log = logging.getLogger("smvision.container")

#: Media types whose bodies arrive as str (the toolkit decodes JSON and CSV; JSON lines
#: are text too, and smvision's input_fn takes either).
TEXT_TYPES = frozenset(
    {
        "application/json",
        "text/csv",
        "application/jsonlines",
        "application/x-jsonlines",
        "application/jsonl",
    }
)
OCTET_STREAM = "application/octet-stream"
ANY = "*/*"


class EntryScriptError(RuntimeError):
    """The entry script cannot be used (missing, or a function with the wrong shape)."""


def _bind(func: Callable, name: str, nargs: int) -> Callable:
    """Return a callable taking exactly nargs arguments that calls func with a trailing
    context (None) when func declares one more parameter, as the toolkit does."""
    try:
        params = inspect.signature(func).parameters.values()
    except (TypeError, ValueError):  # builtins without a signature: call as is
        return func
    positional = [
        p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    var_positional = any(p.kind is p.VAR_POSITIONAL for p in params)
    required = sum(1 for p in positional if p.default is p.empty)
    if var_positional or required <= nargs <= len(positional):
        return func
    if required <= nargs + 1 <= len(positional):

        def with_context(*args: Any) -> Any:
            return func(*args, None)

        with_context.__name__ = name
        return with_context
    raise EntryScriptError(
        f"{name} takes {len(positional)} argument(s); expected {nargs} "
        f"(or {nargs + 1} with a trailing context)"
    )


# Defaults for an entry script that leaves input_fn / predict_fn / output_fn out.
# (The toolkit's defaults turn JSON/CSV/NPY into torch tensors; ours stay torch-free:
# JSON in, the model called on it, JSON out.)


def default_input_fn(body: Any, content_type: str) -> Any:
    if media_type(content_type) == "application/json":
        try:
            return json.loads(body)
        except ValueError as exc:
            raise InferenceError(400, f"the body is not valid JSON: {exc}") from None
    raise InferenceError(
        415, f"unsupported content type {quote(content_type)}; this model accepts application/json"
    )


def default_predict_fn(data: Any, model: Any) -> Any:
    if not callable(model):
        raise TypeError("the model from model_fn is not callable and there is no predict_fn")
    return model(data)


def default_output_fn(prediction: Any, accept: str) -> tuple[bytes, str]:
    if media_type(accept) == "application/json":
        if hasattr(prediction, "tolist"):  # numpy arrays, tensors
            prediction = prediction.tolist()
        return json.dumps(prediction).encode("utf-8"), "application/json"
    raise InferenceError(
        406, f"unsupported accept type {quote(accept)}; this model produces application/json"
    )


class Handler:
    """One loaded entry script and its model. invoke() is thread-safe as far as the
    entry script's functions are."""

    def __init__(self, model_dir: str, program: str = "inference.py",
                 default_accept: str = "application/json") -> None:
        self.model_dir = model_dir
        self.program = program
        self.default_accept = default_accept
        self.model: Any = None
        self._transform: Callable | None = None
        self._input: Callable = default_input_fn
        self._predict: Callable = default_predict_fn
        self._output: Callable = default_output_fn

    def load(self) -> None:
        """Import the entry script and run model_fn. Raises whatever they raise."""
        code_dir = os.path.join(self.model_dir, "code")
        module_name = self.program[:-3] if self.program.endswith(".py") else self.program
        script = os.path.join(code_dir, module_name + ".py")
        if not os.path.isfile(script):
            raise EntryScriptError(
                f"no entry script {script} (SAGEMAKER_PROGRAM={self.program!r})"
            )
        if code_dir not in sys.path:
            sys.path.insert(0, code_dir)
        # Never write __pycache__ into the model dir (it may be read-only, and it is the
        # user's artifact); the entry script's own imports happen now, too.
        saved = sys.dont_write_bytecode
        sys.dont_write_bytecode = True
        try:
            importlib.invalidate_caches()
            module = importlib.import_module(module_name)
            model_fn = getattr(module, "model_fn", None)
            if model_fn is None:
                raise EntryScriptError(f"{script} defines no model_fn(model_dir)")
            transform_fn = getattr(module, "transform_fn", None)
            others = [n for n in ("input_fn", "predict_fn", "output_fn") if hasattr(module, n)]
            if transform_fn is not None and others:
                raise EntryScriptError(
                    f"{script} defines transform_fn and {', '.join(others)}: define either "
                    "transform_fn or input_fn / predict_fn / output_fn (the SageMaker toolkit "
                    "refuses both as well)"
                )
            if transform_fn is not None:
                self._transform = _bind(transform_fn, "transform_fn", 4)
            else:
                for attr, nargs, slot in (
                    ("input_fn", 2, "_input"),
                    ("predict_fn", 2, "_predict"),
                    ("output_fn", 2, "_output"),
                ):
                    func = getattr(module, attr, None)
                    if func is not None:
                        setattr(self, slot, _bind(func, attr, nargs))
            self.model = _bind(model_fn, "model_fn", 1)(self.model_dir)
        finally:
            sys.dont_write_bytecode = saved

    def invoke(self, body: bytes, content_type: str | None, accept: str | None
               ) -> tuple[bytes, str]:
        """Run one request through the entry script: (response body, its content type).

        Times the stages input, predict and output (or transform) of the request open on
        this thread (smvision.inflight), if any."""
        if not content_type:
            content_type = OCTET_STREAM
        data: Any = body
        if media_type(content_type) in TEXT_TYPES:
            try:
                data = body.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise InferenceError(
                    400, f"the body is not valid UTF-8 text for {quote(content_type)}: {exc}"
                ) from None
        if not accept or accept.strip() == ANY:
            accept = self.default_accept
        if self._transform is not None:
            with stage("transform"):
                result = self._transform(self.model, data, content_type, accept)
        else:
            with stage("input"):
                data = self._input(data, content_type)
            with stage("predict"):
                data = self._predict(data, self.model)
            with stage("output"):
                result = self._output(data, accept)
        response_type = accept
        if isinstance(result, tuple) and len(result) == 2:
            result, response_type = result
            response_type = str(response_type) if response_type else accept
        return encode(result), response_type


def encode(result: Any) -> bytes:
    """Response body as bytes: bytes-like as is, str as UTF-8, None as empty, anything
    else as JSON (as TorchServe does)."""
    if isinstance(result, bytes):
        return result
    if isinstance(result, (bytearray, memoryview)):
        return bytes(result)
    if isinstance(result, str):
        return result.encode("utf-8")
    if result is None:
        return b""
    if hasattr(result, "tolist"):
        result = result.tolist()
    return json.dumps(result).encode("utf-8")
