"""Image transforms: the joint image + box-mask training transforms, and the evaluation one.

Training: the mask is 1 inside ONE box and 0 outside, built at the ORIGINAL resolution and
transformed together with the image (resize to a square without keeping the aspect ratio, the
same horizontal flip), then resized to ``mask_size``. Photometric augmentation (grayscale,
colour jitter) touches the image only. By default a flip does NOT swap "left" and "right" in
the text, as in the released code. Two pipelines (run-config key ``data.augment.pipeline``):

* ``released`` (:class:`TrainTransform`, the default): the released AMC code's albumentations
  pipeline (``dataset/__init__.py``, ``dataset/caption_dataset.py``), reproduced on the uint8
  RGB array with OpenCV: ``Resize`` (bilinear, no antialiasing; the mask nearest-neighbour, so
  it stays binary), ``HorizontalFlip``, ``ToGray``, the ColorJitter of
  ``dataset/moco/augmentations/transforms.py`` (from virtex; not torchvision's, see
  :func:`color_jitter_uint8`), CLIP normalisation; the mask then goes to ``mask_size``
  bilinearly with ``align_corners=True``.
* ``torchvision`` (:class:`TorchvisionTrainTransform`): bicubic PIL resize, the mask resized
  bilinearly (antialiased), torchvision's grayscale and ColorJitter (the four adjustments in a
  random order).

All randomness comes from the ``torch.Generator`` passed in (the released code uses python's
global ``random``), so a sample is reproducible from (seed, epoch, index) (see
:mod:`amc.data.datasets`). Each call draws the same count of random numbers whatever the
outcomes.

Evaluation (:class:`EvalTransform`): a square resize without crop, then normalisation; the
released evaluation scripts resize differently per benchmark (``EVAL_RESIZES``; which
benchmark uses which is decided in :mod:`amc.evaluate`).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as F

from amc.io import AmcError

# ALBEF's (CLIP's) image normalisation.
MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)

TRAIN_PIPELINES = ("released", "torchvision")
# cv2-linear: OpenCV bilinear on the uint8 RGB array, no antialiasing (albumentations Resize).
# pil-bicubic: PIL bicubic on the image (torchvision Resize on a PIL image).
EVAL_RESIZES = ("cv2-linear", "pil-bicubic")


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


# ----------------------------------------------------------------- uint8 operations (released)


def resize_linear(pixels: np.ndarray, size: int) -> np.ndarray:
    """albumentations ``Resize(size, size)`` of an image: OpenCV bilinear, no antialiasing."""
    return cv2.resize(pixels, (size, size), interpolation=cv2.INTER_LINEAR)


def resize_nearest(mask: np.ndarray, size: int) -> np.ndarray:
    """albumentations ``Resize(size, size)`` of a mask: OpenCV nearest-neighbour (a binary mask stays binary)."""
    return cv2.resize(mask, (size, size), interpolation=cv2.INTER_NEAREST)


def to_gray_uint8(pixels: np.ndarray) -> np.ndarray:
    """albumentations ``ToGray`` on RGB: OpenCV's grey (0.299 R + 0.587 G + 0.114 B), on 3 channels."""
    return cv2.cvtColor(cv2.cvtColor(pixels, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)


def brightness_contrast_uint8(pixels: np.ndarray, alpha: float, beta: float) -> np.ndarray:
    """albumentations <= 1.2.1 ``brightness_contrast_adjust(img, alpha, beta)`` on uint8.

    ``beta_by_max=False``: each pixel becomes ``pixel * alpha + beta * mean(image)`` (the mean of
    the whole array, all channels), through a 256-entry float32 table clipped to [0, 255] and
    truncated to uint8. The table is computed in float32 as under NumPy 1.x, the released
    environment (``beta * mean`` in float64, then rounded to float32 and added).
    """
    table = np.arange(256, dtype=np.float32) * np.float32(alpha)
    table += np.float32(beta * pixels.mean(dtype=np.float64))
    return cv2.LUT(pixels, np.clip(table, 0, 255).astype(np.uint8))


def shift_hue_saturation_uint8(pixels: np.ndarray, hue_shift: int, sat_shift: int) -> np.ndarray:
    """albumentations ``shift_hsv(img, hue_shift, sat_shift, val_shift=0)`` on uint8.

    In OpenCV's uint8 HSV (hue 0-179): hue becomes ``(hue + hue_shift) % 180``, saturation
    ``clip(saturation + sat_shift, 0, 255)`` (an addition), value unchanged; back to RGB. The
    round trip through HSV happens even when both shifts are 0, as in albumentations.
    """
    hue, saturation, value = cv2.split(cv2.cvtColor(pixels, cv2.COLOR_RGB2HSV))
    levels = np.arange(256, dtype=np.int16)
    hue = cv2.LUT(hue, np.mod(levels + hue_shift, 180).astype(np.uint8))
    saturation = cv2.LUT(saturation, np.clip(levels + sat_shift, 0, 255).astype(np.uint8))
    return cv2.cvtColor(cv2.merge((hue, saturation, value)), cv2.COLOR_HSV2RGB)


@dataclass(frozen=True)
class JitterFactors:
    brightness: float  # in [1 - b, 1 + b]
    contrast: float  # in [1 - c, 1 + c]
    saturation: float  # in [1 - s, 1 + s]
    hue: float  # in [-h, h]


def color_jitter_uint8(pixels: np.ndarray, factors: JitterFactors) -> np.ndarray:
    """The released ColorJitter (virtex's, ``dataset/moco/augmentations/transforms.py``).

    Not torchvision's: contrast multiplies, brightness ADDS ``(b - 1) * mean(image)``, and the
    saturation factor is ADDED to OpenCV's saturation as ``int(s * 255)`` (so s in [0.6, 1.4]
    adds 153-357 and saturates almost every pixel); the hue shifts by ``int(h * 255)`` on
    OpenCV's 0-179 hue scale (the release's arithmetic, kept).
    """
    pixels = brightness_contrast_uint8(pixels, alpha=factors.contrast, beta=factors.brightness - 1)
    return shift_hue_saturation_uint8(
        pixels, hue_shift=int(factors.hue * 255), sat_shift=int(factors.saturation * 255)
    )


def normalise_uint8(pixels: np.ndarray) -> torch.Tensor:
    """albumentations ``Normalize`` (CLIP mean/std, max 255) then ``ToTensorV2``: float32 [3, H, W]."""
    mean = np.array(MEAN, dtype=np.float32) * np.float32(255)
    scale = np.reciprocal(np.array(STD, dtype=np.float32) * np.float32(255))
    normalised = (pixels.astype(np.float32) - mean) * scale
    return torch.from_numpy(np.ascontiguousarray(normalised.transpose(2, 0, 1)))


# ----------------------------------------------------------------------------- training


def _to_float_tensor(image: Image.Image) -> torch.Tensor:
    """[3, H, W] float in [0, 1]."""
    return F.to_dtype(F.pil_to_tensor(image), torch.float32, scale=True)


def _uniform(generator: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * torch.rand((), generator=generator).item()


def _chance(generator: torch.Generator, p: float) -> bool:
    return torch.rand((), generator=generator).item() < p


class TrainTransform:
    """The released augmentation (``data.augment.pipeline: released``), on the uint8 RGB array.

    Resize to ``image_res`` square, flip, grayscale, the released colour jitter, normalise; the
    box mask follows the geometry (nearest-neighbour), then goes to ``mask_size`` bilinearly.
    """

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

    def _factors(self, generator: torch.Generator) -> JitterFactors:
        b, c, s, h = self.color_jitter
        return JitterFactors(
            brightness=_uniform(generator, max(0.0, 1 - b), 1 + b),
            contrast=_uniform(generator, max(0.0, 1 - c), 1 + c),
            saturation=_uniform(generator, max(0.0, 1 - s), 1 + s),
            hue=_uniform(generator, -h, h),
        )

    def __call__(
        self, image: Image.Image, box: list[float] | None, text: str, generator: torch.Generator
    ) -> TrainSample:
        # Every random number up front, in a fixed order: flip, grey, jitter, then the four factors.
        flip = _chance(generator, self.hflip_p)
        gray = _chance(generator, self.grayscale_p)
        jitter = _chance(generator, self.color_jitter_p)
        factors = self._factors(generator)

        pixels = np.asarray(image.convert("RGB"))  # the released np.array(image.convert('RGB'))
        height, width = pixels.shape[:2]
        pixels = resize_linear(pixels, self.image_res)
        mask = None if box is None else resize_nearest(box_mask(box, width, height).numpy(), self.image_res)
        if flip:
            pixels = cv2.flip(pixels, 1)
            mask = None if mask is None else cv2.flip(mask, 1)
            if self.swap_left_right:
                text = swap_left_right(text)
        if gray:
            pixels = to_gray_uint8(pixels)
        if jitter:
            pixels = color_jitter_uint8(pixels, factors)
        if mask is not None:
            mask = torch.nn.functional.interpolate(
                torch.from_numpy(mask)[None, None],
                size=(self.mask_size,) * 2,
                mode="bilinear",
                align_corners=True,
            )[0, 0]
        return TrainSample(normalise_uint8(pixels), mask, text, flip)


class TorchvisionTrainTransform(TrainTransform):
    """The torchvision augmentation (``data.augment.pipeline: torchvision``), on the PIL image.

    Bicubic resize, the mask resized bilinearly (antialiased) with it and again (no antialias) to
    ``mask_size``; torchvision's grayscale and ColorJitter (multiplicative factors, the four
    adjustments in a random order).
    """

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
        pixels = _to_float_tensor(F.resize(image, size, interpolation=InterpolationMode.BICUBIC))
        # The mask is a plain float tensor: a tv_tensors.Mask would be resized nearest-neighbour.
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
            mask = torch.nn.functional.interpolate(
                mask[None], size=(self.mask_size,) * 2, mode="bilinear", align_corners=False
            )[0, 0]
            mask = mask.clamp_(0.0, 1.0)
        return TrainSample(F.normalize(pixels, MEAN, STD), mask, text, flip)


def build_train_transform(pipeline: str, **settings) -> TrainTransform:
    """The training transform of ``pipeline`` (``released`` or ``torchvision``) with ``settings``."""
    classes = {"released": TrainTransform, "torchvision": TorchvisionTrainTransform}
    if pipeline not in classes:
        raise AmcError(f"data.augment.pipeline must be one of {', '.join(TRAIN_PIPELINES)}, not {pipeline!r}")
    return classes[pipeline](**settings)


# ---------------------------------------------------------------------------- evaluation


class EvalTransform:
    """Resize to ``image_res`` square (no crop) the ``resize`` way (``EVAL_RESIZES``), normalise."""

    def __init__(self, image_res: int, resize: str):
        if resize not in EVAL_RESIZES:
            raise AmcError(f"evaluation resize must be one of {', '.join(EVAL_RESIZES)}, not {resize!r}")
        self.image_res, self.resize = image_res, resize

    def __call__(self, image: Image.Image) -> torch.Tensor:
        if self.resize == "cv2-linear":  # released Flickr30k: albumentations Resize + Normalize
            return normalise_uint8(resize_linear(np.asarray(image.convert("RGB")), self.image_res))
        # released RefCOCO+: torchvision Resize(BICUBIC) + ToTensor + Normalize on the PIL image
        resized = F.resize(image, [self.image_res, self.image_res], interpolation=InterpolationMode.BICUBIC)
        return F.normalize(_to_float_tensor(resized), MEAN, STD)
