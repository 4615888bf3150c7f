"""Image transforms: the joint image + box-mask training transform, and the evaluation one.

Training (released AMC code, ``reference/method.md``): the mask is 1 inside ONE box and 0
outside, built at the ORIGINAL resolution, transformed together with the image (resize to a
square without keeping the aspect ratio, the same horizontal flip), then bilinearly resized to
``mask_size``. Photometric augmentation (grayscale, colour jitter) touches the image only.
By default a flip does NOT swap "left" and "right" in the text, as in the released code.

All randomness comes from the ``torch.Generator`` passed in, so a sample is reproducible from
(seed, epoch, index) (see :mod:`amc.data.datasets`). Each call draws the same count of random
numbers whatever the outcomes, which keeps the stream easy to reason about.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as F

# ALBEF's (CLIP's) image normalisation.
MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class TrainSample:
    image: torch.Tensor  # float [3, R, R], normalised
    mask: torch.Tensor | None  # float [mask_size, mask_size] in [0, 1]; None without a box
    text: str
    flipped: bool = False


def box_mask(box: list[float], width: int, height: int) -> torch.Tensor:
    """A [height, width] float mask, 1 on the pixels whose centre lies inside the xyxy box.

    A box thinner than a pixel still marks the pixel holding its centre, so a mask is never empty.
    """
    x1, y1, x2, y2 = box
    c0, c1 = math.ceil(x1 - 0.5), math.ceil(x2 - 0.5)
    r0, r1 = math.ceil(y1 - 0.5), math.ceil(y2 - 0.5)
    if c1 <= c0:
        c0 = c1 = int((x1 + x2) / 2)
        c1 += 1
    if r1 <= r0:
        r0 = r1 = int((y1 + y2) / 2)
        r1 += 1
    mask = torch.zeros(height, width)
    mask[max(r0, 0) : min(r1, height), max(c0, 0) : min(c1, width)] = 1.0
    return mask


_LEFT_RIGHT = re.compile(r"\b(left|right)\b", re.IGNORECASE)


def swap_left_right(text: str) -> str:
    """ "circle left of the square" -> "circle right of the square" (case kept)."""

    def swap(match: re.Match) -> str:
        word = match.group(0)
        other = "right" if word.lower() == "left" else "left"
        return other.upper() if word.isupper() else (other.capitalize() if word[0].isupper() else other)

    return _LEFT_RIGHT.sub(swap, text)


def _to_float_tensor(image: Image.Image) -> torch.Tensor:
    """[3, H, W] float in [0, 1]."""
    return F.to_dtype(F.pil_to_tensor(image), torch.float32, scale=True)


def _uniform(generator: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * torch.rand((), generator=generator).item()


class TrainTransform:
    """Resize to ``image_res`` square, flip, grayscale, colour jitter; the box mask follows the geometry."""

    def __init__(
        self,
        image_res: int,
        mask_size: int,
        hflip_p: float = 0.5,
        grayscale_p: float = 0.2,
        color_jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.4),
        color_jitter_p: float = 0.5,
        swap_left_right: bool = False,
    ):
        brightness, contrast, saturation, hue = color_jitter
        if not 0 <= hue <= 0.5:
            raise ValueError(f"colour jitter hue must lie in [0, 0.5], got {hue}")
        self.image_res, self.mask_size = image_res, mask_size
        self.hflip_p, self.grayscale_p, self.color_jitter_p = hflip_p, grayscale_p, color_jitter_p
        self.color_jitter = (brightness, contrast, saturation, hue)
        self.swap_left_right = swap_left_right

    def __call__(
        self, image: Image.Image, box: list[float] | None, text: str, generator: torch.Generator
    ) -> TrainSample:
        # Draw every random number up front, in a fixed order.
        flip = torch.rand((), generator=generator).item() < self.hflip_p
        gray = torch.rand((), generator=generator).item() < self.grayscale_p
        jitter = torch.rand((), generator=generator).item() < self.color_jitter_p
        order = torch.randperm(4, generator=generator).tolist()
        b, c, s, h = self.color_jitter
        factors = [_uniform(generator, max(0.0, 1 - b), 1 + b), _uniform(generator, max(0.0, 1 - c), 1 + c)]
        factors += [_uniform(generator, max(0.0, 1 - s), 1 + s), _uniform(generator, -h, h)]

        size = [self.image_res, self.image_res]
        width, height = image.size
        # Bicubic on the PIL image, as ALBEF's transforms and our EvalTransform do.
        pixels = _to_float_tensor(F.resize(image, size, interpolation=InterpolationMode.BICUBIC))
        # The mask is a plain float tensor: a tv_tensors.Mask would be resized nearest-neighbour,
        # and the released recipe resizes it bilinearly.
        mask = None
        if box is not None:
            mask = box_mask(box, width, height)[None]
            mask = F.resize(mask, size, interpolation=InterpolationMode.BILINEAR, antialias=True)
        if flip:
            pixels = F.horizontal_flip(pixels)
            mask = F.horizontal_flip(mask) if mask is not None else None
            if self.swap_left_right:
                text = swap_left_right(text)
        if gray:
            pixels = F.rgb_to_grayscale(pixels, num_output_channels=3)
        if jitter:
            adjust = (F.adjust_brightness, F.adjust_contrast, F.adjust_saturation, F.adjust_hue)
            for index in order:
                pixels = adjust[index](pixels, factors[index])
        if mask is not None:
            # torch.nn.functional.interpolate's bilinear (no antialias), as the released code resizes masks.
            mask = torch.nn.functional.interpolate(
                mask[None], size=(self.mask_size,) * 2, mode="bilinear", align_corners=False
            )[0, 0]
            mask = mask.clamp_(0.0, 1.0)
        return TrainSample(F.normalize(pixels, MEAN, STD), mask, text, flip)


class EvalTransform:
    """Resize to ``image_res`` square (bicubic, no crop), to tensor, normalise."""

    def __init__(self, image_res: int):
        self.image_res = image_res

    def __call__(self, image: Image.Image) -> torch.Tensor:
        resized = F.resize(image, [self.image_res, self.image_res], interpolation=InterpolationMode.BICUBIC)
        return F.normalize(_to_float_tensor(resized), MEAN, STD)
