"""Export an EfficientDet network to ONNX for the ONNX Runtime path (build time only).

The exported graph is the inference copy (BatchNorm folded into the convolutions, as
the torch path serves it): input `images` (B, 3, S, S) float32 with a dynamic batch
size, outputs `regression` (B, A, 4) and `classification` (B, A, C), the sigmoid
applied. Pre- and postprocessing stay outside the graph (numpy, shared by the runtime).

One rewrite after the export keeps ONNX Runtime's scores equal to torch's: every
GlobalAveragePool (the squeeze of each squeeze-and-excitation block) becomes a mean over
the rows' width, then over the height. ORT sums a whole feature map (up to 320 x 320
values) in one float32 accumulator, and its NCHWc kernel (ORT_ENABLE_ALL) more loosely
still, so the excitation gates drifted and class scores moved by 1e-3 on trained-like
weights; two short sums are as accurate as torch's, and as fast (README, "EfficientDet on
ONNX Runtime").
"""

from __future__ import annotations

import copy
import io
import warnings
from pathlib import Path

#: the opset ONNX Runtime 1.31 runs fully optimised (ORT_ENABLE_ALL fuses conv + SiLU etc.)
OPSET = 17


def export_efficientdet_onnx(model: object, output: str | Path | None = None) -> bytes:
    """The ONNX bytes of `model` (an EfficientDet, loaded, not yet folded), with the
    squeeze-and-excitation means split (split_global_average_pools); written to output if
    given. The caller's model is left as it is (a folded copy is exported).
    """
    data = split_global_average_pools(torch_onnx_export(model))
    if output is not None:
        Path(output).write_bytes(data)
    return data


def torch_onnx_export(model: object) -> bytes:
    """The BatchNorm-folded copy of `model` as torch.onnx.export writes it, before any rewrite."""
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
        # torch 2.14 calls this TorchScript exporter "legacy". It writes the "SAME" paddings
        # as computed from the input's shape at run time (Shape -> ... -> Pad), never as
        # constants, and that matters: ONNX Runtime's PadFusion folds a constant zero Pad +
        # MaxPool into MaxPool's own padding, which pads with -inf, not zeros.
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
    return buffer.getvalue()


def split_global_average_pools(model_bytes: bytes) -> bytes:
    """The model with each GlobalAveragePool replaced by ReduceMean over the last axis, then
    over the one before it (same values; short float32 sums instead of one long one)."""
    import onnx
    from onnx import helper

    model = onnx.load_from_string(model_bytes)
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    if opset >= 18:  # ReduceMean's axes became an input in opset 18
        raise ValueError(f"split_global_average_pools writes opset-17 ReduceMean nodes; the model is opset {opset}")
    nodes = []
    for node in model.graph.node:
        if node.op_type != "GlobalAveragePool":
            nodes.append(node)
            continue
        (source,), (target,) = node.input, node.output
        rows = f"{target}__row_means"
        nodes.append(helper.make_node("ReduceMean", [source], [rows], name=f"{node.name}/rows", axes=[3], keepdims=1))
        nodes.append(helper.make_node("ReduceMean", [rows], [target], name=f"{node.name}/columns", axes=[2], keepdims=1))
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return model.SerializeToString()
