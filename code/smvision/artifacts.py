"""Artifact roles: the names under which a manifest's `artifacts` lists the files a kind loads.

One place for the words, used by the kind registry (which roles a kind's archives carry),
the archive builders that write the files and the loaders that read them.
"""

from __future__ import annotations

#: EfficientDet: the zylo117 state_dict (torch runtime)
WEIGHTS = "weights"
#: EfficientDet: the network exported to ONNX, BatchNorm folded (ONNX Runtime)
ONNX = "onnx"
#: SAM: the image encoder's state_dict
ENCODER = "encoder"
#: SAM: prompt encoder + mask decoder as ONNX, one prompt per run
DECODER = "decoder"
#: SAM: the same decoder batched over point prompts (everything mode)
POINTS_DECODER = "points_decoder"
