"""SAM's decoder on many single-point prompts at once (ONNX Runtime): the mask generator's step.

The archive's `points_decoder` graph (smvision.archive.sam_onnx_points) takes B prompts
on one image embedding. Each prompt is one foreground point plus SamPredictor's padding
point (the generator gives no box), as SamPredictor.predict_torch(points[:, None],
ones, multimask_output=True) does; the answer is its three multimask outputs per point.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from smvision.runtimes.onnx import create_session

IMG_SIZE = 1024
#: prompts per session run: after its first layer the graph holds 4096 image tokens per
#: prompt (4 MB per tensor each), and larger runs are no faster per point on a CPU
#: (benchmarks/sam_everything.py)
MAX_RUN_PROMPTS = 4


class PointBatchDecoder:
    """One ONNX Runtime session for the batched decoder, made once."""

    def __init__(self, onnx_path: str | Path, device: str = "cpu", threads: int | None = None) -> None:
        from smvision.models.sam.resize import resize_longest_side

        self.session = create_session(onnx_path, device, threads)
        self.transform = resize_longest_side(IMG_SIZE)

    def decode(self, embedding: np.ndarray, points: np.ndarray, image_size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """(B, 3) predicted IoUs and (B, 3, 256, 256) low-res logits for B foreground
        points (x, y) in the pixels of an image (or crop) of image_size (H, W) whose
        embedding (1, 256, 64, 64) this is."""
        count = len(points)
        coords = np.zeros((count, 2, 2), dtype=np.float32)
        coords[:, 0] = self.transform.apply_coords(np.asarray(points, dtype=np.float64), image_size)
        labels = np.tile(np.array([[1.0, -1.0]], dtype=np.float32), (count, 1))
        feed = {
            "image_embeddings": np.ascontiguousarray(embedding, dtype=np.float32),
            "point_coords": coords,
            "point_labels": labels,
        }
        runs = [
            self.session.run(
                ["iou_predictions", "low_res_masks"],
                {**feed, "point_coords": coords[start : start + MAX_RUN_PROMPTS], "point_labels": labels[start : start + MAX_RUN_PROMPTS]},
            )
            for start in range(0, count, MAX_RUN_PROMPTS)
        ]
        scores = np.concatenate([r[0][:, 1:] for r in runs])
        low_res = np.concatenate([r[1][:, 1:] for r in runs])
        return scores, low_res
