"""What everything mode's work costs: counted before it runs (Workload) and priced by
what recent requests took (WorkRate), so work that cannot fit a deadline can be refused
up front. Pure numbers: the kind decides what to refuse."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from smvision.models.sam.everything import EverythingOptions

MASKS_PER_PROMPT = 3  # the generator's multimask output
LOW_RES_UPSAMPLED = 1024 * 1024  # every mask's logits go through 1024x1024 first


def mask_pixels(crop_size: tuple[int, int], image_size: tuple[int, int]) -> int:
    """Pixels one mask of a crop goes through: its logits upsampled to 1024x1024 and then
    to the crop (stability score, box), its RLE over the whole image."""
    return LOW_RES_UPSAMPLED + crop_size[0] * crop_size[1] + image_size[0] * image_size[1]


@dataclass(frozen=True)
class Workload:
    """How much work a request asks for, counted before any of it runs."""

    prompts: int  # decoder prompts (grid points over every crop)
    crops: int  # crops to encode besides the whole image
    mask_pixels: int  # over every prompt: mask_pixels() of its crop (per mask it may upsample)
    image_size: tuple[int, int]

    @classmethod
    def of(cls, options: EverythingOptions, image_size: tuple[int, int]) -> "Workload":
        grids = options.grids()
        boxes, layers = options.crops(image_size)
        pixels = sum(
            len(grids[layer]) * mask_pixels((y1 - y0, x1 - x0), image_size)
            for (x0, y0, x1, y1), layer in zip(boxes, layers)
        )
        return cls(sum(len(grids[layer]) for layer in layers), len(layers) - 1, pixels, tuple(image_size))


def _average(old: float, new: float) -> float:
    return new if old == 0.0 else 0.7 * old + 0.3 * new


class WorkRate:
    """What everything mode's work costs, as measured on recent requests (exponential
    averages, seeded at load), to refuse work that cannot fit the deadline: seconds per
    decoder prompt, per mask pixel upsampled, scored and encoded (mask_pixels()), per crop
    encode, and the share of the decoder's masks that pass a positive pred_iou_thresh (only
    those are upsampled; 1 until requests show otherwise)."""

    def __init__(self, per_prompt: float, per_mask_pixel: float = 0.0, per_encode: float = 0.0, kept: float = 1.0) -> None:
        self.per_prompt = per_prompt
        self.per_mask_pixel = per_mask_pixel
        self.per_encode = per_encode
        self.kept = kept

    def seconds(self, work: Workload, options: EverythingOptions, encode_image: bool = False) -> float:
        kept = self.kept if options.pred_iou_thresh > 0.0 else 1.0
        upsampling = MASKS_PER_PROMPT * kept * work.mask_pixels * self.per_mask_pixel
        return work.prompts * self.per_prompt + upsampling + (work.crops + int(encode_image)) * self.per_encode

    def saw_prompts(self, count: int, seconds: float) -> None:
        if count:
            self.per_prompt = _average(self.per_prompt, seconds / count)

    def saw_masks(self, count: int, pixels_each: int, seconds: float) -> None:
        if count:
            self.per_mask_pixel = _average(self.per_mask_pixel, seconds / (count * pixels_each))

    def saw_kept(self, kept: int, decoded: int) -> None:
        if decoded:
            self.kept = 0.7 * self.kept + 0.3 * kept / decoded

    def saw_encode(self, seconds: float) -> None:
        self.per_encode = _average(self.per_encode, seconds)
