"""SAM's prompt encoder + mask decoder on ONNX Runtime: embedding + prompts -> masks.

The same answer as segment_anything's SamPredictor.predict on the same embedding and
prompts: coordinates through ResizeLongestSide(1024), a (0, 0) / -1 padding point when
there is no box, multimask -> masks 1..3, single -> mask 0, low-res logits upscaled to
1024, cropped to the resized image, upscaled to the original size, > 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from smvision.models.sam.prompts import MASK_INPUT_SIZE, Prompts
from smvision.runtimes.onnx import create_session

IMG_SIZE = 1024
EMBEDDING_SHAPE = (1, 256, 64, 64)
MASK_THRESHOLD = 0.0
_BOX_LABELS = np.array([2.0, 3.0], dtype=np.float32)
_PAD_POINT = np.zeros((1, 2), dtype=np.float32)
_PAD_LABEL = np.array([-1.0], dtype=np.float32)


@dataclass(frozen=True, eq=False)
class DecodeResult:
    """K masks (K = 3 for multimask, else 1) in original-image pixels."""

    masks: np.ndarray  # (K, H, W) bool
    scores: np.ndarray  # (K,) float32, the predicted IoU
    low_res_logits: np.ndarray  # (K, 256, 256) float32, mask_input for a next round


def input_size(original_size: tuple[int, int], long_side: int = IMG_SIZE) -> tuple[int, int]:
    """(h, w) of the image resized so its long side is long_side (ResizeLongestSide)."""
    height, width = original_size
    scale = long_side / max(height, width)
    return int(height * scale + 0.5), int(width * scale + 0.5)


class SamDecoder:
    """One ONNX Runtime session, made once; decode() per request."""

    def __init__(self, onnx_path: str | Path, device: str = "cpu", threads: int | None = None) -> None:
        from segment_anything.utils.transforms import ResizeLongestSide

        self.session = create_session(onnx_path, device, threads)
        self.input_names = {i.name for i in self.session.get_inputs()}
        self.output_names = ["iou_predictions", "low_res_masks"]
        self.transform = ResizeLongestSide(IMG_SIZE)
        self._no_mask = np.zeros((1, 1, MASK_INPUT_SIZE, MASK_INPUT_SIZE), dtype=np.float32)

    def feed(self, embedding: np.ndarray, original_size: tuple[int, int], prompts: Prompts) -> dict[str, np.ndarray]:
        """The ONNX inputs for one embedding and its prompts (SamPredictor's conventions)."""
        coords, labels = [], []
        if prompts.points is not None:
            coords.append(self.transform.apply_coords(prompts.points, original_size))
            labels.append(prompts.labels)
        if prompts.box is not None:
            coords.append(self.transform.apply_boxes(prompts.box[None], original_size).reshape(2, 2))
            labels.append(_BOX_LABELS)
        else:
            coords.append(_PAD_POINT)
            labels.append(_PAD_LABEL)
        has_mask = prompts.mask_input is not None
        feed = {
            "image_embeddings": np.ascontiguousarray(embedding, dtype=np.float32),
            "point_coords": np.concatenate(coords).astype(np.float32)[None],
            "point_labels": np.concatenate(labels).astype(np.float32)[None],
            "mask_input": prompts.mask_input if has_mask else self._no_mask,
            "has_mask_input": np.array([1.0 if has_mask else 0.0], dtype=np.float32),
            "orig_im_size": np.array(original_size, dtype=np.float32),
        }
        return {name: value for name, value in feed.items() if name in self.input_names}

    def decode(self, embedding: np.ndarray, original_size: tuple[int, int], prompts: Prompts) -> DecodeResult:
        """Masks, scores and low-res logits for one image's embedding (1, 256, 64, 64)."""
        scores, low_res = self.session.run(self.output_names, self.feed(embedding, original_size, prompts))
        chosen = slice(1, None) if prompts.multimask_output else slice(0, 1)
        low_res = low_res[0, chosen]
        masks = upscale_masks(low_res, input_size(original_size), original_size)
        return DecodeResult(masks=masks, scores=scores[0, chosen], low_res_logits=low_res)


def upscale_masks(low_res: np.ndarray, size: tuple[int, int], original_size: tuple[int, int]) -> np.ndarray:
    """(K, 256, 256) logits -> (K, H, W) bool, as Sam.postprocess_masks then > 0."""
    import torch
    from torch.nn import functional as F

    logits = torch.from_numpy(low_res)[None]
    logits = F.interpolate(logits, (IMG_SIZE, IMG_SIZE), mode="bilinear", align_corners=False)
    logits = logits[..., : size[0], : size[1]]
    logits = F.interpolate(logits, original_size, mode="bilinear", align_corners=False)
    return (logits[0] > MASK_THRESHOLD).numpy()
