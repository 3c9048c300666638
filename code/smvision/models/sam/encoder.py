"""SAM's image encoder: RGB images -> (256, 64, 64) embeddings, as SamPredictor makes them.

The same pixels as SamPredictor.set_image: ResizeLongestSide(1024) (its own PIL resize;
a side that would round to 0 px is kept at 1: smvision.models.sam.resize),
normalised on the 0-255 scale with SAM's mean and std, zero-padded bottom/right to
1024x1024. Several images run as one batched forward pass. Precision: fp32 everywhere;
bf16 on a GPU or on a CPU with native bf16 (AVX512-BF16 / AMX); fp16 on a GPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from smvision.models.sam.build import IMAGE_SIZE, PIXEL_MEAN, PIXEL_STD, SamConfig, build_image_encoder

PRECISIONS = ("fp32", "bf16", "fp16")


@dataclass(frozen=True, eq=False)
class Embedding:
    """One image's embedding (256, 64, 64) float32, with SamPredictor's two sizes."""

    array: np.ndarray  # (1, 256, 64, 64) float32, as get_image_embedding() returns it
    original_size: tuple[int, int]  # (H, W) of the image
    input_size: tuple[int, int]  # (h, w) after ResizeLongestSide, before padding
    georef: Any = None  # the image's own georeferencing (smvision.geo.Georef), if a GeoTIFF


def check_precision(precision: str, device: str) -> None:
    """ValueError unless precision runs on device (a bad setting stops the model at load)."""
    import torch

    if precision not in PRECISIONS:
        raise ValueError(f"SAM precision {precision!r}: use one of {', '.join(PRECISIONS)}")
    if device == "cpu" and precision == "fp16":
        raise ValueError("SAM precision fp16 needs a GPU; on a CPU use fp32 or bf16")
    if device == "cpu" and precision == "bf16" and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        raise ValueError("SAM precision bf16: this CPU has no native bfloat16 (AVX512-BF16 / AMX); use fp32")


class SamEncoder:
    """segment_anything's ImageEncoderViT, loaded once, for batched encoding."""

    def __init__(self, config: SamConfig, state_dict: Mapping[str, Any], device: str = "cpu", precision: str = "fp32") -> None:
        import torch
        from smvision.models.sam.resize import resize_longest_side

        check_precision(precision, device)
        self.config = config
        self.device = torch.device(device)
        self.dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
        self.precision = precision
        with torch.device("meta"):  # no random init of weights that are about to be replaced
            encoder = build_image_encoder(config)
        encoder.load_state_dict(state_dict, strict=True, assign=True)
        self.model = encoder.to(device=self.device, dtype=self.dtype).eval()
        self.transform = resize_longest_side(IMAGE_SIZE)
        self.mean = torch.tensor(PIXEL_MEAN, device=self.device).view(3, 1, 1)
        self.std = torch.tensor(PIXEL_STD, device=self.device).view(3, 1, 1)

    def preprocess(self, image: np.ndarray) -> tuple[Any, tuple[int, int]]:
        """HxWx3 uint8 RGB -> (normalised, padded 3x1024x1024 float32 tensor, input size)."""
        import torch
        from torch.nn import functional as F

        resized = self.transform.apply_image(image)
        pixels = torch.from_numpy(resized).to(self.device).permute(2, 0, 1).float()
        pixels = (pixels - self.mean) / self.std
        height, width = resized.shape[:2]
        return F.pad(pixels, (0, IMAGE_SIZE - width, 0, IMAGE_SIZE - height)), (height, width)

    def encode(self, images: Sequence[np.ndarray]) -> list[Embedding]:
        """One Embedding per image, from one batched forward pass."""
        import torch

        batch, input_sizes = [], []
        for image in images:
            pixels, size = self.preprocess(image)
            batch.append(pixels)
            input_sizes.append(size)
        with torch.inference_mode():
            features = self.model(torch.stack(batch).to(self.dtype)).float().cpu().numpy()
        return [
            Embedding(features[i : i + 1], (int(image.shape[0]), int(image.shape[1])), size)
            for i, (image, size) in enumerate(zip(images, input_sizes))
        ]

    def warm_up(self) -> None:
        """One forward pass at load, so the first request is not the slow one."""
        self.encode([np.zeros((IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)])


