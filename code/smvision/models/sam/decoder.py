"""SAM's prompt encoder + mask decoder on ONNX Runtime: embedding + prompts -> masks.

The same answer as segment_anything's SamPredictor.predict on the same embedding and
prompts: coordinates through ResizeLongestSide(1024) (each side at least 1 px:
smvision.models.sam.resize), a (0, 0) / -1 padding point when there is no box,
multimask -> masks 1..3, single -> mask 0, low-res logits upscaled to 1024, cropped to
the resized image, upscaled to the original size, > 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from smvision.inflight import stage
from smvision.models.sam.build import IMAGE_SIZE
from smvision.models.sam.masks import MaskRuns
from smvision.models.sam.prompts import MASK_INPUT_SIZE, Prompts
from smvision.models.sam.resize import input_size, resize_longest_side
from smvision.runtimes.onnx import create_session

IMG_SIZE = IMAGE_SIZE
MASK_THRESHOLD = 0.0
#: sparse_mask_runs costs about as much per output edge as dense_mask_runs per 1 / DENSE_EDGES
#: output pixels, plus a fixed part worth SPARSE_FIXED_EDGES edges (measured on two cores from
#: 480x640 to 3000x4500, smooth to salt-and-pepper masks: benchmarks/sam_decode.py --calibrate)
DENSE_EDGES = 0.012
SPARSE_FIXED_EDGES = 7000
_BOX_LABELS = np.array([2.0, 3.0], dtype=np.float32)
_PAD_POINT = np.zeros((1, 2), dtype=np.float32)
_PAD_LABEL = np.array([-1.0], dtype=np.float32)


@dataclass(frozen=True, eq=False)
class DecodeResult:
    """K masks (K = 3 for multimask, else 1) in original-image pixels.

    masks is array-like (K, H, W) bool, held as COCO run lengths (MaskRuns): np.asarray
    or indexing makes the full-size array on first use; encode_masks(masks, "rle") never
    does."""

    masks: MaskRuns
    scores: np.ndarray  # (K,) float32, the predicted IoU
    low_res_logits: np.ndarray  # (K, 256, 256) float32, mask_input for a next round

    @property
    def runs(self) -> MaskRuns:
        """The masks as run lengths (the same object as masks)."""
        return self.masks


class SamDecoder:
    """One ONNX Runtime session, made once; decode() per request. Its threads sleep when
    idle rather than spin (spinning=True to let them: see create_session). It has no CPU
    memory arena: a prompt's memory grows with its points and is returned after each call
    (with the arena, one 1,024-point prompt left the worker 370 MiB larger for good; a
    one-point decode takes the same time either way, 28-31 ms on vit_b, two cores)."""

    def __init__(self, onnx_path: str | Path, device: str = "cpu", threads: int | None = None, spinning: bool = False) -> None:
        self.session = create_session(onnx_path, device, threads, spinning=spinning, memory_arena=False)
        self.input_names = {i.name for i in self.session.get_inputs()}
        self.output_names = ["iou_predictions", "low_res_masks"]
        self.transform = resize_longest_side(IMG_SIZE)
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
        with stage("graph"):
            scores, low_res = self.session.run(self.output_names, self.feed(embedding, original_size, prompts))
        chosen = slice(1, None) if prompts.multimask_output else slice(0, 1)
        low_res = low_res[0, chosen]
        with stage("runs"):
            runs = mask_runs(low_res, input_size(original_size), original_size)
        return DecodeResult(masks=runs, scores=scores[0, chosen], low_res_logits=low_res)


def mask_runs(low_res: np.ndarray, size: tuple[int, int], original_size: tuple[int, int]) -> MaskRuns:
    """(K, 256, 256) logits -> the run lengths of Sam.postprocess_masks(...) > 0 (bilinear
    to 1024, crop to size (h, w), bilinear to original_size (H, W), threshold).

    Each mask goes the cheaper of two ways, decided from its own low-res logits before
    either runs (takes_dense_path): sparse_mask_runs for masks with few edges (what a
    trained SAM gives), dense_mask_runs for ragged ones (random weights). Both give the
    same masks (a pixel could differ only where a logit rounds to exactly 0)."""
    dense = takes_dense_path(low_res, size, original_size)
    if not dense.any():
        return sparse_mask_runs(low_res, size, original_size)
    if dense.all():
        return dense_mask_runs(low_res, size, original_size)
    rles: list = [None] * len(low_res)
    for chosen, way in ((dense, dense_mask_runs), (~dense, sparse_mask_runs)):
        for index, rle in zip(np.flatnonzero(chosen), way(low_res[chosen], size, original_size).rles):
            rles[index] = rle
    return MaskRuns(tuple(original_size), rles)


def takes_dense_path(low_res: np.ndarray, size: tuple[int, int], original_size: tuple[int, int]) -> np.ndarray:
    """(K,) bool: True for masks that dense_mask_runs makes faster than sparse_mask_runs.

    A mask's output edges (run boundaries) are estimated from its logits: the sign changes
    down each low-res column of the part that maps to the image, each one an edge in about
    W / (those columns) output columns. The dense way is taken when they exceed
    DENSE_EDGES * H * W - SPARSE_FIXED_EDGES: small images always (about 1 ms either way),
    a 1500x2250 mask above ~33k edges (random weights give ~190k, a trained SAM's objects
    a few thousand)."""
    n = low_res.shape[-1]
    up = IMG_SIZE // n
    height, width = original_size
    rows, columns = (min(n, -(-side // up) + 1) for side in size)
    inside = low_res[:, :rows, :columns] > MASK_THRESHOLD
    changes = np.count_nonzero(inside[:, 1:] != inside[:, :-1], axis=(1, 2))
    return changes * (width / columns) > DENSE_EDGES * height * width - SPARSE_FIXED_EDGES


def sparse_mask_runs(low_res: np.ndarray, size: tuple[int, int], original_size: tuple[int, int]) -> MaskRuns:
    """mask_runs without making any (H, W) array: the cost grows with the masks' edges.

    Bilinear resizing is separable. Along x it is done for real, on the 256 low-res rows
    only: cols[k, x, l] (K x W x 256). Along y, output column x is piecewise linear in
    cols[k, x, :], so it can change sign only between low-res rows that do: there the two
    1024-level samples around the crossing are interpolated, then the output row where
    the final interpolation crosses zero. Those rows are the column's run boundaries, in
    COCO's column-major order.
    """
    import cv2

    count, n = low_res.shape[0], low_res.shape[-1]
    h, w = size
    height, width = original_size
    up = IMG_SIZE // n
    cols = np.empty((count, width, n), dtype=np.float32)
    for k in range(count):  # transposed, so that both resizes run along x
        wide = cv2.resize(np.ascontiguousarray(low_res[k].T), (n, IMG_SIZE), interpolation=cv2.INTER_LINEAR)
        cols[k] = cv2.resize(wide[:w], (n, width), interpolation=cv2.INTER_LINEAR)
    flat = cols.reshape(-1)
    inside = flat > MASK_THRESHOLD
    change = np.flatnonzero(inside[1:] != inside[:-1])
    change = change[change % n != n - 1]  # not from one column's end to the next one's start
    column, row = np.divmod(change, n)  # sorted by (column, row)
    above, below = flat[change], flat[change + 1]
    crossing = row + above / (above - below)  # in low-res rows
    # 1024-level rows r0, r0 + 1 on either side (row r sits at low-res (r + 0.5) / up - 0.5)
    r0 = np.ceil((crossing + 0.5) * up - 0.5).astype(np.int64) - 1
    keep = (r0 >= 0) & (r0 + 1 <= h - 1)
    column, r0 = column[keep], r0[keep]
    repeated = np.flatnonzero((column[1:] == column[:-1]) & (r0[1:] == r0[:-1])) + 1
    column, r0 = np.delete(column, repeated), np.delete(r0, repeated)  # two crossings in one gap: see below
    v0, v1 = _sample_rows(flat, column, r0, up, n), _sample_rows(flat, column, r0 + 1, up, n)
    sign_change = (v0 > MASK_THRESHOLD) != (v1 > MASK_THRESHOLD)
    column, r0, v0, v1 = column[sign_change], r0[sign_change], v0[sign_change], v1[sign_change]
    crossing = r0 + v0 / (v0 - v1)  # in cropped 1024-level rows
    # The first output row y whose source row (y + 0.5) * h / H - 0.5 is past the crossing.
    y = np.ceil((crossing + 0.5) * (height / h) - 0.5).astype(np.int64)
    columns = count * width
    top = inside[::n]  # output row 0 lies before every crossing with y <= 0
    first = top ^ (np.bincount(column[y <= 0], minlength=columns) & 1).astype(bool)
    within = (y > 0) & (y < height)
    toggles = column[within] * height + y[within]  # sorted
    if (toggles[1:] == toggles[:-1]).any():  # a run of zero length is no run
        toggles, repeats = np.unique(toggles, return_counts=True)
        toggles = toggles[(repeats & 1) == 1]
    last = first ^ (np.bincount(toggles // height, minlength=columns) & 1).astype(bool)
    previous = np.concatenate([[False], last[:-1]])
    previous[::width] = False  # every mask starts with a run of zeros
    starts = np.flatnonzero(first != previous) * height
    toggles = np.sort(np.concatenate([toggles, starts]))
    size_each = height * width
    bounds = np.searchsorted(toggles, np.arange(count + 1) * size_each)
    counts = []
    for k in range(count):
        local = toggles[bounds[k] : bounds[k + 1]] - k * size_each
        counts.append(np.diff(local, prepend=0, append=size_each).astype(np.uint32))
    return MaskRuns.from_counts((height, width), counts)


def _sample_rows(flat: np.ndarray, column: np.ndarray, row: np.ndarray, up: int, n: int) -> np.ndarray:
    """cols[column] linearly interpolated at 1024-level row `row` (edges clamped)."""
    source = np.maximum((row + 0.5) / up - 0.5, 0.0)
    low = np.minimum(source.astype(np.int64), n - 1)
    high = np.minimum(low + 1, n - 1)
    fraction = (source - low).astype(np.float32)
    base = column * n
    return flat[base + low] * (1 - fraction) + flat[base + high] * fraction


def dense_mask_runs(low_res: np.ndarray, size: tuple[int, int], original_size: tuple[int, int]) -> MaskRuns:
    """mask_runs the plain way (full-size logits, thresholded, column by column, encoded by
    pycocotools), for masks with so many edges that interpolating only at the edges costs
    more: the cost grows with the pixels."""
    import cv2

    h, w = size
    height, width = original_size
    columns = np.empty((low_res.shape[0], width, height), dtype=bool)
    wide = np.empty((IMG_SIZE, IMG_SIZE), dtype=np.float32)  # one of each for all masks (fewer page faults)
    full = np.empty((width, height), dtype=np.float32)
    for k, logits in enumerate(low_res):  # transposed, so each mask comes out column-major
        cv2.resize(np.ascontiguousarray(logits.T), (IMG_SIZE, IMG_SIZE), dst=wide, interpolation=cv2.INTER_LINEAR)
        cv2.resize(wide[:w, :h], (height, width), dst=full, interpolation=cv2.INTER_LINEAR)
        np.greater(full, MASK_THRESHOLD, out=columns[k])
    return MaskRuns.from_columns(columns)
