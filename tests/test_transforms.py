"""The training transform keeps image and box mask aligned; randomness comes only from the generator."""

from __future__ import annotations

import pytest
import torch
from PIL import Image, ImageDraw

from amc.data.transforms import MEAN, STD, EvalTransform, TrainTransform, box_mask, swap_left_right

NO_COLOUR = dict(grayscale_p=0.0, color_jitter_p=0.0)


def white_box_image(width: int, height: int, box: list[int]) -> Image.Image:
    image = Image.new("RGB", (width, height), (0, 0, 0))
    ImageDraw.Draw(image).rectangle((box[0], box[1], box[2] - 1, box[3] - 1), fill=(255, 255, 255))
    return image


def unnormalise(image: torch.Tensor) -> torch.Tensor:
    return image * torch.tensor(STD)[:, None, None] + torch.tensor(MEAN)[:, None, None]


def bright_region(image: torch.Tensor, size: int) -> torch.Tensor:
    """Where the white box ended up, at the mask's resolution, as a boolean map."""
    grey = unnormalise(image).mean(0, keepdim=True)[None]
    return torch.nn.functional.interpolate(grey, size=(size, size), mode="area")[0, 0] > 0.5


def iou(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a & b).sum() / (a | b).sum()).item()


def test_box_mask_covers_exactly_the_box_pixels():
    mask = box_mask([2, 1, 5, 3], width=8, height=4)
    expected = torch.zeros(4, 8)
    expected[1:3, 2:5] = 1
    assert torch.equal(mask, expected)
    # A box thinner than a pixel still marks one pixel.
    assert box_mask([3.2, 1.1, 3.4, 1.3], 8, 4).sum() == 1


@pytest.mark.parametrize("flip", [0.0, 1.0])
def test_mask_follows_image_through_resize_and_flip(flip):
    box = [20, 10, 60, 40]  # left part of a wide image: a flip moves it to the right
    image = white_box_image(150, 90, box)
    transform = TrainTransform(image_res=64, mask_size=32, hflip_p=flip, **NO_COLOUR)
    sample = transform(image, box, "a white square", torch.Generator().manual_seed(0))
    assert sample.image.shape == (3, 64, 64) and sample.mask.shape == (32, 32)
    assert sample.flipped is bool(flip)
    assert 0.0 <= sample.mask.min() and sample.mask.max() <= 1.0
    assert iou(sample.mask > 0.5, bright_region(sample.image, 32)) > 0.9
    # The box sits in the left half; after a flip, in the right half.
    columns = (sample.mask > 0.5).any(0).nonzero().flatten()
    assert bool(columns.float().mean() > 16) == bool(flip)


def test_mask_is_resized_to_mask_size_independently_of_image_res():
    box = [10, 30, 50, 70]
    image = white_box_image(100, 80, box)
    sample = TrainTransform(image_res=48, mask_size=96, hflip_p=0.0, **NO_COLOUR)(
        image, box, "x", torch.Generator().manual_seed(1)
    )
    assert sample.mask.shape == (96, 96)
    expected = torch.zeros(96, 96, dtype=torch.bool)
    expected[36:84, 10:48] = True  # box scaled by (96/100, 96/80)
    assert iou(sample.mask > 0.5, expected) > 0.9


def test_no_box_gives_no_mask():
    sample = TrainTransform(32, 16)(
        Image.new("RGB", (40, 30)), None, "text", torch.Generator().manual_seed(0)
    )
    assert sample.mask is None and sample.image.shape == (3, 32, 32)


def test_same_generator_seed_gives_the_same_sample_and_seeds_differ():
    image = Image.effect_noise((70, 50), 60).convert("RGB")
    transform = TrainTransform(image_res=32, mask_size=16)
    box = [5, 5, 30, 25]

    def sample(seed):
        return transform(image, box, "left", torch.Generator().manual_seed(seed))

    a, b = sample(3), sample(3)
    assert torch.equal(a.image, b.image) and torch.equal(a.mask, b.mask) and a.flipped == b.flipped
    others = [sample(seed) for seed in range(4, 12)]
    assert any(not torch.equal(a.image, o.image) for o in others)
    assert {o.flipped for o in others} == {True, False}


def test_global_rng_is_not_used():
    image = Image.effect_noise((40, 40), 60).convert("RGB")
    transform = TrainTransform(image_res=32, mask_size=16)
    torch.manual_seed(0)
    a = transform(image, [1, 1, 9, 9], "t", torch.Generator().manual_seed(5))
    torch.manual_seed(123)
    b = transform(image, [1, 1, 9, 9], "t", torch.Generator().manual_seed(5))
    assert torch.equal(a.image, b.image)


def test_left_right_swapped_only_when_asked_and_flipped():
    image, box = Image.new("RGB", (40, 30)), [1, 1, 10, 10]
    text = "Circle left of the square, right?"
    always_flip = dict(hflip_p=1.0, **NO_COLOUR)
    released = TrainTransform(32, 16, **always_flip)(image, box, text, torch.Generator().manual_seed(0))
    assert released.text == text  # the released code does not swap
    swapped = TrainTransform(32, 16, swap_left_right=True, **always_flip)(
        image, box, text, torch.Generator().manual_seed(0)
    )
    assert swapped.text == "Circle right of the square, left?"
    unflipped = TrainTransform(32, 16, hflip_p=0.0, swap_left_right=True)(
        image, box, text, torch.Generator().manual_seed(0)
    )
    assert unflipped.text == text
    assert swap_left_right("Left leftover RIGHT") == "Right leftover LEFT"


def test_grayscale_and_jitter_touch_the_image_only():
    image = Image.new("RGB", (40, 40), (200, 30, 30))
    box = [5, 5, 20, 20]
    plain = TrainTransform(32, 16, hflip_p=0.0, **NO_COLOUR)(
        image, box, "t", torch.Generator().manual_seed(0)
    )
    gray = TrainTransform(32, 16, hflip_p=0.0, grayscale_p=1.0, color_jitter_p=0.0)(
        image, box, "t", torch.Generator().manual_seed(0)
    )
    channels = unnormalise(gray.image)
    assert torch.allclose(channels[0], channels[1], atol=1e-5) and torch.allclose(
        channels[1], channels[2], atol=1e-5
    )
    assert torch.equal(plain.mask, gray.mask)
    jittered = TrainTransform(32, 16, hflip_p=0.0, grayscale_p=0.0, color_jitter_p=1.0)(
        image, box, "t", torch.Generator().manual_seed(0)
    )
    assert not torch.allclose(jittered.image, plain.image)
    assert torch.equal(plain.mask, jittered.mask)


def test_eval_transform_resizes_to_square_and_normalises():
    image = Image.new("RGB", (120, 70), (255, 255, 255))
    tensor = EvalTransform(48)(image)
    assert tensor.shape == (3, 48, 48)
    expected = (1 - torch.tensor(MEAN)) / torch.tensor(STD)
    assert torch.allclose(tensor[:, 24, 24], expected, atol=1e-4)
