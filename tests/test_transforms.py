"""Transforms: the released uint8 operations against their formulas, image and box mask aligned in
both training pipelines, randomness only from the generator, and the evaluation resizes."""

from __future__ import annotations

import random
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as F

from amc.data.datasets import sample_generator
from amc.data.transforms import (
    MEAN,
    STD,
    EvalTransform,
    JitterFactors,
    TorchvisionTrainTransform,
    TrainTransform,
    box_mask,
    brightness_contrast_uint8,
    build_train_transform,
    color_jitter_uint8,
    shift_hue_saturation_uint8,
    swap_left_right,
    to_gray_uint8,
)
from amc.io import AmcError

NO_COLOUR = dict(grayscale_p=0.0, color_jitter_p=0.0)
NOTHING_RANDOM = dict(hflip_p=0.0, **NO_COLOUR)
PIPELINES = [TrainTransform, TorchvisionTrainTransform]


def white_box_image(width: int, height: int, box: list[int]) -> Image.Image:
    image = Image.new("RGB", (width, height), (0, 0, 0))
    ImageDraw.Draw(image).rectangle((box[0], box[1], box[2] - 1, box[3] - 1), fill=(255, 255, 255))
    return image


def noise_image(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def unnormalise(image: torch.Tensor) -> torch.Tensor:
    return image * torch.tensor(STD)[:, None, None] + torch.tensor(MEAN)[:, None, None]


def clip_normalise(pixels: np.ndarray) -> torch.Tensor:
    """CLIP normalisation of a uint8 HxWx3 array, written out independently: float [3, H, W]."""
    scaled = torch.from_numpy(pixels.astype(np.float64) / 255).permute(2, 0, 1)
    return (
        (scaled - torch.tensor(MEAN, dtype=torch.float64)[:, None, None]) / torch.tensor(STD)[:, None, None]
    ).float()


def bright_region(image: torch.Tensor, size: int) -> torch.Tensor:
    """Where the white box ended up, at the mask's resolution, as a boolean map."""
    grey = unnormalise(image).mean(0, keepdim=True)[None]
    return torch.nn.functional.interpolate(grey, size=(size, size), mode="area")[0, 0] > 0.5


def iou(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a & b).sum() / (a | b).sum()).item()


def hsv(pixels: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(pixels, cv2.COLOR_RGB2HSV).astype(int)


# ------------------------------------------------------------- released uint8 operations


def test_box_mask_covers_exactly_the_box_pixels():
    mask = box_mask([2, 1, 5, 3], width=8, height=4)
    expected = torch.zeros(4, 8)
    expected[1:3, 2:5] = 1
    assert torch.equal(mask, expected)
    # A box thinner than a pixel still marks one pixel: the one holding its centre.
    assert box_mask([3.2, 1.1, 3.4, 1.3], 8, 4).sum() == 1
    thin_x = box_mask([50.2, 10.0, 50.4, 20.0], width=100, height=30)
    assert thin_x.sum() == 10 and thin_x[10:20, 50].all()
    thin_y = box_mask([10.0, 25.2, 20.0, 25.4], width=30, height=100)
    assert thin_y.sum() == 10 and thin_y[25, 10:20].all()


def test_contrast_multiplies_and_brightness_adds_beta_times_the_image_mean():
    pixels = np.array([[[10, 20, 30], [40, 50, 60]]], dtype=np.uint8)  # mean 35
    contrast = brightness_contrast_uint8(pixels, alpha=1.5, beta=0.0)
    assert contrast.tolist() == [[[15, 30, 45], [60, 75, 90]]]
    brightness = brightness_contrast_uint8(pixels, alpha=1.0, beta=0.2)  # + 0.2 * 35 = + 7
    assert brightness.tolist() == [[[17, 27, 37], [47, 57, 67]]]
    # not torchvision's or albumentations >= 1.3's (+ beta * 255, + alpha * beta * mean)
    assert brightness_contrast_uint8(pixels, alpha=1.5, beta=0.2).tolist() == [[[22, 37, 52], [67, 82, 97]]]


def test_brightness_contrast_table_truncates_clips_and_is_float32():
    levels = np.arange(256, dtype=np.uint8).reshape(16, 16, 1).repeat(3, axis=2)
    halved = brightness_contrast_uint8(levels, alpha=0.5, beta=0.0)
    assert halved[..., 0].ravel().tolist() == [level // 2 for level in range(256)]  # 255 -> 127, truncated
    assert brightness_contrast_uint8(levels, alpha=1.4, beta=0.0).max() == 255  # clipped, no wrap
    assert brightness_contrast_uint8(levels, alpha=1.0, beta=-0.5)[..., 0].ravel()[:64].tolist() == [0] * 64
    # 238 * float32(1.23) - 0.36 * 196.5: 222 in float32 (NumPy 1.x, the released environment; and
    # albumentations 1.2.1 there), 221 if summed in float64.
    crafted = np.array([238, 249, 122, 177], dtype=np.uint8).repeat(3).reshape(2, 2, 3)
    assert brightness_contrast_uint8(crafted, alpha=1.23, beta=-0.36)[..., 0].ravel().tolist() == [
        222,
        235,
        79,
        146,
    ]


def test_the_brightness_contrast_table_is_float32_at_every_level():
    """float32(0.7) * 10 rounds up to 7.0 in float32 (truncated: 7) but is 6.99999988 in float64 (6)."""
    levels = np.arange(256, dtype=np.uint8).reshape(16, 16, 1).repeat(3, axis=2)
    table = np.clip(np.arange(256, dtype=np.float32) * np.float32(0.7), 0, 255).astype(np.uint8)
    assert brightness_contrast_uint8(levels, alpha=0.7, beta=0.0)[..., 0].ravel().tolist() == table.tolist()
    assert table[10] == 7


def test_hue_and_saturation_shifts_exactly():
    """Pure blue (OpenCV hue 120) + 70 wraps to hue 10 (mod 180); a negative saturation shift stops
    at 0 (grey); the released factors become int(h * 255) and int(s * 255) (h = s = 0.5: 127)."""
    blue = np.array([[[0, 0, 255]]], dtype=np.uint8)
    hue_10 = cv2.cvtColor(np.array([[[10, 255, 255]]], dtype=np.uint8), cv2.COLOR_HSV2RGB)
    assert np.array_equal(shift_hue_saturation_uint8(blue, hue_shift=70, sat_shift=0), hue_10)
    pixels = np.array([[[120, 110, 100], [200, 100, 100]]], dtype=np.uint8)
    grey = shift_hue_saturation_uint8(pixels, hue_shift=0, sat_shift=-300)
    assert grey.tolist() == [[[120, 120, 120], [200, 200, 200]]]
    jittered = color_jitter_uint8(
        pixels, JitterFactors(brightness=1.0, contrast=1.0, saturation=0.5, hue=0.5)
    )
    assert np.array_equal(jittered, shift_hue_saturation_uint8(pixels, hue_shift=127, sat_shift=127))
    assert not np.array_equal(jittered, shift_hue_saturation_uint8(pixels, hue_shift=128, sat_shift=127))
    assert not np.array_equal(jittered, shift_hue_saturation_uint8(pixels, hue_shift=127, sat_shift=128))


def test_saturation_shift_is_added_and_clipped():
    pixels = np.array([[[200, 100, 100], [120, 110, 100], [128, 128, 128]]], dtype=np.uint8)
    before = hsv(pixels)
    after = hsv(shift_hue_saturation_uint8(pixels, hue_shift=0, sat_shift=40))
    assert after[0, 1, 1] == pytest.approx(before[0, 1, 1] + 40, abs=2)  # 42 + 40, not 42 * 1.4
    # the released factor: int(s * 255) ADDED, 153 at s = 0.6 ... 357 at s = 1.4
    low = color_jitter_uint8(pixels, JitterFactors(brightness=1.0, contrast=1.0, saturation=0.6, hue=0.0))
    assert np.array_equal(low, shift_hue_saturation_uint8(pixels, 0, 153))
    high = color_jitter_uint8(pixels, JitterFactors(brightness=1.0, contrast=1.0, saturation=1.4, hue=0.0))
    assert np.array_equal(high, shift_hue_saturation_uint8(pixels, 0, 357))
    assert (hsv(high)[..., 1] == 255).all()  # every pixel saturated, the grey one too
    assert (high.min(axis=2) == 0).all()  # a fully saturated colour has a zero channel
    assert hsv(low)[0, 2, 1] == pytest.approx(153, abs=2)  # grey (saturation 0) gets 153


def test_hue_shift_wraps_at_180():
    hues = np.array([[[170, 255, 255], [5, 255, 255]]], dtype=np.uint8)
    pixels = cv2.cvtColor(hues, cv2.COLOR_HSV2RGB)
    up = hsv(shift_hue_saturation_uint8(pixels, hue_shift=20, sat_shift=0))[0, :, 0]
    assert abs(int(up[0]) - 10) <= 1 and abs(int(up[1]) - 25) <= 1  # 190 wraps to 10
    down = hsv(shift_hue_saturation_uint8(pixels, hue_shift=-20, sat_shift=0))[0, :, 0]
    assert abs(int(down[0]) - 150) <= 1 and abs(int(down[1]) - 165) <= 1  # -15 wraps to 165
    # the released hue factor is int(h * 255), on OpenCV's 0-179 scale
    jittered = color_jitter_uint8(
        pixels, JitterFactors(brightness=1.0, contrast=1.0, saturation=0.0, hue=0.1)
    )
    assert np.array_equal(jittered, shift_hue_saturation_uint8(pixels, hue_shift=25, sat_shift=0))


def test_to_gray_gives_three_equal_channels_of_opencv_grey():
    pixels = np.asarray(noise_image(9, 7))
    grey = to_gray_uint8(pixels)
    assert grey.shape == pixels.shape and grey.dtype == np.uint8
    assert np.array_equal(grey[..., 0], grey[..., 1]) and np.array_equal(grey[..., 1], grey[..., 2])
    weights = pixels.astype(float) @ np.array([0.299, 0.587, 0.114])
    assert np.abs(grey[..., 0] - weights).max() <= 1


# --------------------------------------------------------------------- released pipeline


def test_released_resize_is_opencv_bilinear_not_pil_bicubic():
    image = noise_image(53, 37)
    sample = TrainTransform(32, 32, **NOTHING_RANDOM)(image, None, "t", torch.Generator().manual_seed(0))
    expected = clip_normalise(cv2.resize(np.asarray(image), (32, 32), interpolation=cv2.INTER_LINEAR))
    torch.testing.assert_close(sample.image, expected, rtol=0, atol=1e-5)
    bicubic = F.normalize(
        F.to_dtype(F.pil_to_tensor(image.resize((32, 32), Image.BICUBIC)), scale=True), MEAN, STD
    )
    assert (sample.image - bicubic).abs().max() > 0.1


def test_released_mask_stays_binary_and_matches_a_nearest_resize():
    box = [7, 5, 30, 22]
    image = white_box_image(53, 37, box)
    sample = TrainTransform(32, 32, **NOTHING_RANDOM)(image, box, "t", torch.Generator().manual_seed(0))
    assert set(sample.mask.unique().tolist()) == {0.0, 1.0}
    nearest = cv2.resize(box_mask(box, 53, 37).numpy(), (32, 32), interpolation=cv2.INTER_NEAREST)
    assert torch.equal(sample.mask, torch.from_numpy(nearest))
    # then to mask_size bilinearly, align_corners=True
    bigger = TrainTransform(32, 63, **NOTHING_RANDOM)(image, box, "t", torch.Generator().manual_seed(0))
    expected = torch.nn.functional.interpolate(
        torch.from_numpy(nearest)[None, None], size=(63, 63), mode="bilinear", align_corners=True
    )[0, 0]
    torch.testing.assert_close(bigger.mask, expected)
    assert bigger.mask.dtype == torch.float32


def test_released_pipeline_applies_the_drawn_jitter_after_the_flip_and_grey():
    image, box = noise_image(40, 30, seed=3), [2, 2, 20, 20]
    every = TrainTransform(24, 24, hflip_p=1.0, grayscale_p=1.0, color_jitter_p=1.0)
    generator = torch.Generator().manual_seed(11)
    sample = every(image, box, "t", generator)
    # the same draws, in the documented order: flip, grey, jitter, then b, c, s, h
    replay = torch.Generator().manual_seed(11)
    draws = [torch.rand((), generator=replay).item() for _ in range(7)]
    b, c, s = ((1 - 0.4) + ((1 + 0.4) - (1 - 0.4)) * u for u in draws[3:6])
    h = -0.4 + 0.8 * draws[6]
    pixels = cv2.flip(cv2.resize(np.asarray(image), (24, 24), interpolation=cv2.INTER_LINEAR), 1)
    pixels = color_jitter_uint8(to_gray_uint8(pixels), JitterFactors(b, c, s, h))
    torch.testing.assert_close(sample.image, clip_normalise(pixels), rtol=0, atol=1e-5)


# ----------------------------------------------------------------------- both pipelines


@pytest.mark.parametrize("pipeline", PIPELINES)
@pytest.mark.parametrize("flip", [0.0, 1.0])
def test_mask_follows_image_through_resize_and_flip(pipeline, flip):
    box = [20, 10, 60, 40]  # left part of a wide image: a flip moves it to the right
    image = white_box_image(150, 90, box)
    transform = pipeline(image_res=64, mask_size=64, hflip_p=flip, **NO_COLOUR)
    sample = transform(image, box, "a white square", torch.Generator().manual_seed(0))
    assert sample.image.shape == (3, 64, 64) and sample.mask.shape == (64, 64)
    assert sample.flipped is bool(flip)
    assert 0.0 <= sample.mask.min() and sample.mask.max() <= 1.0
    assert iou(sample.mask > 0.5, bright_region(sample.image, 64)) > 0.9
    # The box sits in the left half; after a flip, in the right half.
    columns = (sample.mask > 0.5).any(0).nonzero().flatten()
    assert bool(columns.float().mean() > 32) == bool(flip)


def test_released_mask_equals_the_bright_square_exactly_at_image_res():
    box = [12, 8, 40, 30]  # even edges: halving the image keeps the square's edges crisp
    image = white_box_image(64, 64, box)
    for flip in (0.0, 1.0):
        transform = TrainTransform(32, 32, hflip_p=flip, **NO_COLOUR)
        sample = transform(image, box, "t", torch.Generator().manual_seed(0))
        bright = unnormalise(sample.image).mean(0) > 0.5
        assert sample.mask.sum() == 14 * 11 and torch.equal(bright, sample.mask.bool())


@pytest.mark.parametrize("pipeline", PIPELINES)
def test_mask_is_resized_to_mask_size_independently_of_image_res(pipeline):
    box = [10, 30, 50, 70]
    image = white_box_image(100, 80, box)
    sample = pipeline(image_res=48, mask_size=96, **NOTHING_RANDOM)(
        image, box, "x", torch.Generator().manual_seed(1)
    )
    assert sample.mask.shape == (96, 96)
    expected = torch.zeros(96, 96, dtype=torch.bool)
    expected[36:84, 10:48] = True  # box scaled by (96/100, 96/80)
    assert iou(sample.mask > 0.5, expected) > 0.9


@pytest.mark.parametrize("pipeline", PIPELINES)
@pytest.mark.parametrize("flip", [0.0, 1.0])
def test_no_box_gives_no_mask(pipeline, flip):
    transform = pipeline(32, 16, hflip_p=flip)
    sample = transform(Image.new("RGB", (40, 30)), None, "text", torch.Generator().manual_seed(0))
    assert sample.mask is None and sample.image.shape == (3, 32, 32) and sample.flipped is bool(flip)


def test_the_released_transforms_take_an_image_of_any_mode_as_rgb():
    rgb = noise_image(40, 30, seed=2)
    transform, evaluation = TrainTransform(32, 16, **NOTHING_RANDOM), EvalTransform(32, "cv2-linear")
    for mode in ("L", "RGBA", "P"):
        image = rgb.convert(mode)
        sample = transform(image, [1, 1, 9, 9], "t", torch.Generator().manual_seed(0))
        direct = transform(image.convert("RGB"), [1, 1, 9, 9], "t", torch.Generator().manual_seed(0))
        assert sample.image.shape == (3, 32, 32) and torch.equal(sample.image, direct.image), mode
        assert torch.equal(evaluation(image), evaluation(image.convert("RGB"))), mode


def test_the_released_probabilities_are_the_defaults():
    """ALBEF's augmentation as released: flip 0.5, grey 0.2, colour jitter 0.4 each with p 0.5."""
    for pipeline in PIPELINES:
        transform = pipeline(32, 16)
        assert (transform.hflip_p, transform.grayscale_p, transform.color_jitter_p) == (0.5, 0.2, 0.5)
        assert transform.color_jitter == (0.4, 0.4, 0.4, 0.4) and transform.swap_left_right is False


def test_the_torchvision_mask_is_the_antialiased_box_then_bilinear_to_mask_size():
    """Resized with the image (bilinear, antialiased: a thin box keeps its share of the pixels),
    then to mask_size (bilinear, align_corners=False), clipped to [0, 1]."""
    box, size = [101, 20, 104, 180], (300, 200)  # 3 px wide in a 300 px wide image
    transform = TorchvisionTrainTransform(32, 24, **NOTHING_RANDOM)
    sample = transform(Image.new("RGB", size), box, "t", torch.Generator().manual_seed(0))
    resized = F.resize(
        box_mask(box, *size)[None], [32, 32], interpolation=InterpolationMode.BILINEAR, antialias=True
    )
    expected = torch.nn.functional.interpolate(
        resized[None], size=(24, 24), mode="bilinear", align_corners=False
    )
    torch.testing.assert_close(sample.mask, expected[0, 0].clamp(0, 1), rtol=0, atol=1e-6)
    # the box's share of the image survives the antialiased downscale
    assert sample.mask.mean().item() == pytest.approx(3 * 160 / (300 * 200), rel=0.1)


@pytest.mark.parametrize("pipeline", PIPELINES)
def test_same_generator_seed_gives_the_same_sample_and_seeds_differ(pipeline):
    image = noise_image(70, 50)
    transform = pipeline(image_res=32, mask_size=16)
    box = [5, 5, 30, 25]

    def sample(seed):
        return transform(image, box, "left", torch.Generator().manual_seed(seed))

    a, b = sample(3), sample(3)
    assert torch.equal(a.image, b.image) and torch.equal(a.mask, b.mask) and a.flipped == b.flipped
    others = [sample(seed) for seed in range(4, 12)]
    assert any(not torch.equal(a.image, o.image) for o in others)
    assert {o.flipped for o in others} == {True, False}


@pytest.mark.parametrize("pipeline", PIPELINES)
def test_global_rngs_are_neither_used_nor_advanced(pipeline):
    image = noise_image(40, 40)
    transform = pipeline(image_res=32, mask_size=16, hflip_p=0.5, grayscale_p=0.5, color_jitter_p=0.5)
    samples = []
    for seed in (0, 123):
        torch.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed)
        states = (torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy())
        samples.append(transform(image, [1, 1, 9, 9], "t", torch.Generator().manual_seed(5)))
        assert torch.equal(torch.get_rng_state(), states[0]) and random.getstate() == states[1]
        assert np.array_equal(np.random.get_state()[1], states[2])
    assert torch.equal(samples[0].image, samples[1].image)


@pytest.mark.parametrize("pipeline", PIPELINES)
def test_the_same_count_of_random_numbers_whatever_the_outcomes(pipeline):
    image = noise_image(30, 30)
    never, always = (
        pipeline(16, 16, **NOTHING_RANDOM),
        pipeline(16, 16, hflip_p=1.0, grayscale_p=1.0, color_jitter_p=1.0),
    )
    a, b = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    never(image, [1, 1, 9, 9], "t", a)
    always(image, [1, 1, 9, 9], "t", b)
    assert torch.equal(a.get_state(), b.get_state())


@pytest.mark.parametrize("pipeline", PIPELINES)
def test_left_right_swapped_only_when_asked_and_flipped(pipeline):
    image, box = Image.new("RGB", (40, 30)), [1, 1, 10, 10]
    text = "Circle left of the square, right?"
    always_flip = dict(hflip_p=1.0, **NO_COLOUR)
    released = pipeline(32, 16, **always_flip)(image, box, text, torch.Generator().manual_seed(0))
    assert released.text == text  # the released code does not swap
    swapped = pipeline(32, 16, swap_left_right=True, **always_flip)(
        image, box, text, torch.Generator().manual_seed(0)
    )
    assert swapped.text == "Circle right of the square, left?"
    unflipped = pipeline(32, 16, hflip_p=0.0, swap_left_right=True)(
        image, box, text, torch.Generator().manual_seed(0)
    )
    assert unflipped.text == text
    assert swap_left_right("Left leftover RIGHT") == "Right leftover LEFT"


@pytest.mark.parametrize("pipeline", PIPELINES)
def test_grayscale_and_jitter_touch_the_image_only(pipeline):
    image = Image.new("RGB", (40, 40), (200, 30, 30))
    box = [5, 5, 20, 20]
    plain = pipeline(32, 16, **NOTHING_RANDOM)(image, box, "t", torch.Generator().manual_seed(0))
    gray = pipeline(32, 16, hflip_p=0.0, grayscale_p=1.0, color_jitter_p=0.0)(
        image, box, "t", torch.Generator().manual_seed(0)
    )
    channels = unnormalise(gray.image)
    assert torch.allclose(channels[0], channels[1], atol=1e-5) and torch.allclose(
        channels[1], channels[2], atol=1e-5
    )
    assert torch.equal(plain.mask, gray.mask)
    jittered = pipeline(32, 16, hflip_p=0.0, grayscale_p=0.0, color_jitter_p=1.0)(
        image, box, "t", torch.Generator().manual_seed(0)
    )
    assert not torch.allclose(jittered.image, plain.image)
    assert torch.equal(plain.mask, jittered.mask)


def test_build_train_transform_names_the_pipeline():
    settings = dict(image_res=16, mask_size=16)
    assert type(build_train_transform("released", **settings)) is TrainTransform
    assert type(build_train_transform("torchvision", **settings)) is TorchvisionTrainTransform
    with pytest.raises(AmcError, match="data.augment.pipeline must be one of released, torchvision"):
        build_train_transform("albumentations", **settings)


# ---------------------------------------------------------------------------- evaluation


def test_eval_cv2_linear_is_opencv_bilinear_and_albumentations_normalise_exactly():
    image = noise_image(120, 70, seed=4)
    tensor = EvalTransform(48, "cv2-linear")(image)
    resized = cv2.resize(np.asarray(image), (48, 48), interpolation=cv2.INTER_LINEAR)
    mean = np.array(MEAN, dtype=np.float32) * np.float32(255)
    inverse_std = np.reciprocal(np.array(STD, dtype=np.float32) * np.float32(255))
    expected = torch.from_numpy(((resized.astype(np.float32) - mean) * inverse_std).transpose(2, 0, 1).copy())
    assert torch.equal(tensor, expected)


def test_eval_pil_bicubic_is_torchvision_resize_on_the_pil_image_exactly():
    image = noise_image(120, 70, seed=5)
    tensor = EvalTransform(48, "pil-bicubic")(image)
    resized = F.resize(image, [48, 48], interpolation=InterpolationMode.BICUBIC)
    expected = F.normalize(F.to_dtype(F.pil_to_tensor(resized), torch.float32, scale=True), MEAN, STD)
    assert torch.equal(tensor, expected)
    assert (tensor - EvalTransform(48, "cv2-linear")(image)).abs().max() > 0.1
    white = EvalTransform(48, "pil-bicubic")(Image.new("RGB", (120, 70), (255, 255, 255)))
    torch.testing.assert_close(
        white[:, 24, 24], (1 - torch.tensor(MEAN)) / torch.tensor(STD), atol=1e-4, rtol=0
    )


def test_eval_transform_rejects_an_unknown_resize():
    with pytest.raises(AmcError, match="cv2-linear, pil-bicubic"):
        EvalTransform(48, "bilinear")


@pytest.mark.parametrize("pipeline", ["released", "torchvision"])
def test_run_config_pipeline_key_selects_the_training_transform(tmp_path, pipeline):
    from amc.run_config import load_run_config
    from amc.train import build_dataset

    noise_image(50, 40).save(tmp_path / "a.png")
    (tmp_path / "captions.json").write_text('[{"image": "a.png", "caption": "a square"}]')
    base = ["model_config=m.yaml", "vocab=v", "data.kind=captions", f"data.path={tmp_path / 'captions.json'}"]
    config = load_run_config(None, [*base, "data.image_res=32", f"data.augment.pipeline={pipeline}"])
    dataset = build_dataset(config)
    expected = {"released": TrainTransform, "torchvision": TorchvisionTrainTransform}[pipeline]
    assert type(dataset.transform) is expected
    generator = sample_generator(config.seed, 0, 0)
    direct = expected(32, 256)(noise_image(50, 40), None, "a square", generator)
    assert torch.equal(dataset[0]["image"], direct.image)


def test_paper_config_uses_the_released_pipeline_and_the_demo_torchvision():
    from amc.run_config import load_run_config

    base = ["model_config=m.yaml", "vocab=v", "data.path=p"]
    assert load_run_config(None, base).data.augment.pipeline == "released"
    runs = Path(__file__).resolve().parent.parent / "config" / "runs"
    assert load_run_config(str(runs / "paper-finetune.yaml"), base).data.augment.pipeline == "released"
    for demo in ("demo-finetune.yaml", "demo-pretrain.yaml"):
        assert load_run_config(str(runs / demo), base).data.augment.pipeline == "torchvision"


def test_torchvision_pipeline_applies_its_draws_in_the_drawn_order():
    image, box = noise_image(40, 30, seed=6), [2, 2, 20, 20]
    every = TorchvisionTrainTransform(24, 24, hflip_p=1.0, grayscale_p=1.0, color_jitter_p=1.0,
                                      color_jitter=(0.3, 0.2, 0.1, 0.05))  # fmt: skip
    sample = every(image, box, "t", torch.Generator().manual_seed(13))
    # the same draws by hand: flip, grey, jitter, the order of the four adjustments, their factors
    replay = torch.Generator().manual_seed(13)
    chances = [torch.rand((), generator=replay).item() for _ in range(3)]
    order = torch.randperm(4, generator=replay).tolist()
    uniforms = [torch.rand((), generator=replay).item() for _ in range(4)]
    ranges = [(0.7, 1.3), (0.8, 1.2), (0.9, 1.1), (-0.05, 0.05)]
    factors = [low + (high - low) * u for (low, high), u in zip(ranges, uniforms, strict=True)]
    assert all(c < 1.0 for c in chances)
    pixels = F.horizontal_flip(
        F.to_dtype(
            F.pil_to_tensor(F.resize(image, [24, 24], interpolation=InterpolationMode.BICUBIC)),
            torch.float32,
            scale=True,
        )
    )
    pixels = F.rgb_to_grayscale(pixels, num_output_channels=3)
    adjust = (F.adjust_brightness, F.adjust_contrast, F.adjust_saturation, F.adjust_hue)
    for index in order:
        pixels = adjust[index](pixels, factors[index])
    torch.testing.assert_close(sample.image, F.normalize(pixels, MEAN, STD))
    assert sample.flipped


@pytest.mark.parametrize("pipeline", PIPELINES)
def test_the_jitter_strengths_bound_each_factor(pipeline):
    """A strength of 0 leaves that adjustment at its identity; brightness over 1 is floored at 0."""
    transform = pipeline(16, 16, color_jitter=(1.5, 0.0, 0.0, 0.0))
    for seed in range(20):
        factors = TrainTransform._factors(transform, torch.Generator().manual_seed(seed))
        assert 0.0 <= factors.brightness <= 2.5
        assert (factors.contrast, factors.saturation, factors.hue) == (1.0, 1.0, 0.0)
    with pytest.raises(ValueError, match=r"^colour jitter hue must lie in \[0, 0.5\], got 0.6$"):
        pipeline(16, 16, color_jitter=(0.4, 0.4, 0.4, 0.6))
    assert pipeline(16, 16, color_jitter=(0.4, 0.4, 0.4, 0.5)).color_jitter == (0.4, 0.4, 0.4, 0.5)


def uniforms(seed: int, count: int, skip: int = 0) -> list[float]:
    generator = torch.Generator().manual_seed(seed)
    draws = [torch.rand((), generator=generator).item() for _ in range(skip + count)]
    return draws[skip:]


@pytest.mark.parametrize("strengths", [(0.4, 0.3, 0.2, 0.1), (1.5, 1.2, 1.1, 0.5)])
def test_each_jitter_factor_is_uniform_over_its_range(strengths, monkeypatch):
    """Factor k is low + (high - low) * u, over [max(0, 1 - s), 1 + s] (hue: [-h, h]), in both
    pipelines; a strength over 1 starts the range at 0."""
    ranges = [(max(0.0, 1 - s), 1 + s) for s in strengths[:3]] + [(-strengths[3], strengths[3])]

    def expected(draws):
        return [low + (high - low) * u for (low, high), u in zip(ranges, draws, strict=True)]

    released = TrainTransform(16, 16, color_jitter=strengths)._factors(torch.Generator().manual_seed(4))
    got = [released.brightness, released.contrast, released.saturation, released.hue]
    assert got == pytest.approx(expected(uniforms(4, 4)), rel=1e-12, abs=1e-12)

    seen = {}

    def spy(name):
        real = getattr(F, name)

        def adjust(pixels, factor):
            seen[name] = factor
            return real(pixels, factor)

        return adjust

    for name in ("adjust_brightness", "adjust_contrast", "adjust_saturation", "adjust_hue"):
        monkeypatch.setattr(F, name, spy(name))
    torchvision = TorchvisionTrainTransform(
        16, 16, hflip_p=0.0, grayscale_p=0.0, color_jitter_p=1.0, color_jitter=strengths
    )
    torchvision(noise_image(20, 20), None, "t", torch.Generator().manual_seed(4))
    # draws: flip, grey, jitter, a permutation of 4, then the four factors
    replay = torch.Generator().manual_seed(4)
    for _ in range(3):
        torch.rand((), generator=replay)
    torch.randperm(4, generator=replay)
    draws = [torch.rand((), generator=replay).item() for _ in range(4)]
    got = [seen[name] for name in ("adjust_brightness", "adjust_contrast", "adjust_saturation", "adjust_hue")]
    assert got == pytest.approx(expected(draws), rel=1e-12, abs=1e-12)


def test_a_sample_without_a_box_flips_too():
    """Caption samples (pretraining, VMRM-style) have no box: flipped, they have no mask either."""
    image = noise_image(53, 37)
    transform = TrainTransform(32, 32, hflip_p=1.0, **NO_COLOUR)
    sample = transform(image, None, "the dog left of the cat", torch.Generator().manual_seed(0))
    assert sample.mask is None and sample.flipped and sample.text == "the dog left of the cat"  # as released
    resized = cv2.resize(np.asarray(image), (32, 32), interpolation=cv2.INTER_LINEAR)
    torch.testing.assert_close(sample.image, clip_normalise(resized[:, ::-1].copy()), rtol=0, atol=1e-5)
