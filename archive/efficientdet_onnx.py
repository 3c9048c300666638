"""Export an EfficientDet network to ONNX for the ONNX Runtime path (build time only).

The exported graph is the inference copy (BatchNorm folded into the convolutions, as
the torch path serves it): input `images` (B, 3, S, S) float32 with a dynamic batch
size, outputs `regression` (B, A, 4) and `classification` (B, A, C), the sigmoid
applied. Pre- and postprocessing stay outside the graph (numpy, shared by the runtime).
"""

from __future__ import annotations

import copy
import io
import warnings
from pathlib import Path

#: the opset ONNX Runtime 1.31 runs fully optimised (ORT_ENABLE_ALL fuses conv + SiLU etc.)
OPSET = 17


def export_efficientdet_onnx(model: object, output: str | Path | None = None) -> bytes:
    """The ONNX bytes of `model` (an EfficientDet, loaded, not yet folded); written to output if given.

    The caller's model is left as it is (a folded copy is exported).
    """
    import torch

    from smvision.models.efficientdet import EfficientDet
    from smvision.models.efficientdet.onnx_detector import INPUT_NAME, OUTPUT_NAMES

    if not isinstance(model, EfficientDet):
        raise TypeError(f"expected an EfficientDet, got {type(model).__name__}")
    folded = copy.deepcopy(model).float().eval().fuse_batchnorm()
    folded.requires_grad_(False)
    size = folded.config.input_size
    example = torch.zeros(1, 3, size, size)
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        # The TF-"SAME" paddings read the (fixed) spatial size as Python ints: that is intended.
        warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
        # torch 2.14 calls this TorchScript exporter "legacy"; it bakes the call-time "SAME"
        # paddings in as constants for the fixed input size, and README's numbers use it.
        warnings.simplefilter("ignore", category=DeprecationWarning)
        torch.onnx.export(
            folded,
            (example,),
            buffer,
            input_names=[INPUT_NAME],
            output_names=list(OUTPUT_NAMES),
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAMES[0]: {0: "batch"}, OUTPUT_NAMES[1]: {0: "batch"}},
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )
    data = buffer.getvalue()
    if output is not None:
        Path(output).write_bytes(data)
    return data
