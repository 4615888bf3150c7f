"""The AMC loss on hand-built maps and masks (values computed by hand in the comments)."""

import pytest
import torch

from amc.losses import amc_loss


def _mask(size, box):
    m = torch.zeros(size, size)
    x1, y1, x2, y2 = box
    m[y1:y2, x1:x2] = 1
    return m


def test_perfect_map_gives_zero_loss_beyond_the_margins():
    mask = _mask(8, (2, 2, 6, 6))[None]
    heat = mask.clone()  # 1 inside, 0 outside
    loss = amc_loss(heat, mask)
    # mean_out - mean_in + 0.1 = -0.9 -> 0; max_out - max_in + 0.5 = -0.5 -> 0
    assert loss.l_mean.item() == 0 and loss.l_max.item() == 0 and loss.total.item() == 0


def test_inverted_map_values():
    mask = _mask(4, (0, 0, 2, 2))[None]  # 4 pixels inside, 12 outside
    heat = 1 - mask
    loss = amc_loss(heat, mask)
    # mean_out=1, mean_in=0: L_mean = 1.1; max_out=1, max_in=0: L_max = 1.5
    assert loss.l_mean.item() == pytest.approx(1.1)
    assert loss.l_max.item() == pytest.approx(1.5)
    assert loss.total.item() == pytest.approx(0.2 * 1.1 + 0.8 * 1.5)


def test_batch_global_mean_differs_from_per_sample_mean():
    # sample 0: box 1 pixel of 16, heat 1 on the box only; sample 1: box of 8 pixels, heat uniform 0.5
    m0 = torch.zeros(4, 4)
    m0[0, 0] = 1
    m1 = torch.zeros(4, 4)
    m1[:2] = 1
    h0 = m0.clone()
    h1 = torch.full((4, 4), 0.5)
    heat, mask = torch.stack([h0, h1]), torch.stack([m0, m1])
    released = amc_loss(heat, mask, delta_mean=0.1)
    per_sample = amc_loss(heat, mask, delta_mean=0.1, per_sample_mean=True)
    # batch-global: inside = (1 + 8*0.5)/9 = 5/9, outside = (0 + 8*0.5)/23 = 4/23
    assert released.l_mean.item() == pytest.approx(max(0.0, 4 / 23 - 5 / 9 + 0.1), abs=1e-6)
    # per sample: s0 -> max(0, 0 - 1 + 0.1) = 0; s1 -> max(0, 0.5 - 0.5 + 0.1) = 0.1; mean 0.05
    assert per_sample.l_mean.item() == pytest.approx(0.05, abs=1e-6)
    # L_max per sample: s0 -> max(0, 0-1+0.5)=0 ; s1 -> 0.5-0.5+0.5 = 0.5 ; mean 0.25
    assert released.l_max.item() == pytest.approx(0.25, abs=1e-6)


def test_weights_and_margins_are_honoured_and_gradients_flow():
    mask = _mask(6, (1, 1, 3, 3))[None]
    heat = torch.rand(1, 6, 6, requires_grad=True)
    loss = amc_loss(heat, mask, delta_mean=0.3, delta_max=0.7, weight_mean=0.0, weight_max=1.0)
    assert loss.total.item() == pytest.approx(loss.l_max.item())
    loss.total.backward()
    assert heat.grad is not None and heat.grad.abs().sum() > 0


def test_shape_mismatch_is_a_clear_error():
    with pytest.raises(ValueError, match="same shape"):
        amc_loss(torch.zeros(2, 4, 4), torch.zeros(2, 5, 5))


def _reference_amc(heat, mask, delta_mean, delta_max, weight_mean, weight_max, per_sample, eps=1e-7):
    """The loss pixel by pixel in float64, written from the formulas in amc/losses.py's docstring."""
    batch = heat.shape[0]
    means = []
    for b in range(batch) if per_sample else [None]:
        rows = range(batch) if b is None else [b]
        s_in = sum(
            float(heat[r, i, j] * mask[r, i, j])
            for r in rows
            for i in range(heat.shape[1])
            for j in range(heat.shape[2])
        )
        n_in = sum(float(mask[r].sum()) for r in rows)
        s_out = sum(
            float(heat[r, i, j] * (1 - mask[r, i, j]))
            for r in rows
            for i in range(heat.shape[1])
            for j in range(heat.shape[2])
        )
        n_out = sum(float((1 - mask[r]).sum()) for r in rows)
        means.append(max(0.0, s_out / (n_out + eps) - s_in / (n_in + eps) + delta_mean))
    l_mean = sum(means) / len(means)
    maxima = [
        max(0.0, float((heat[b] * (1 - mask[b])).max()) - float((heat[b] * mask[b]).max()) + delta_max)
        for b in range(batch)
    ]
    l_max = sum(maxima) / batch
    return l_mean, l_max, weight_mean * l_mean + weight_max * l_max


@pytest.mark.parametrize("per_sample", [False, True])
def test_both_readings_of_l_mean_equal_a_pixel_by_pixel_reference(per_sample):
    """float64, random maps and boxes of different sizes, every sample with heat inside and outside:
    the exact means (eps 1e-7 in the denominators), hinges, maxima and weights."""
    generator = torch.Generator().manual_seed(0)
    heat = torch.rand(3, 6, 5, generator=generator, dtype=torch.float64)
    mask = torch.zeros(3, 6, 5, dtype=torch.float64)
    mask[0, 1:3, 1:2] = 1  # 2 pixels
    mask[1, 0:5, 0:4] = 1  # 20 pixels
    mask[2, 2:4, 2:5] = 1  # 6 pixels
    heat[1] *= 0.2  # a sample whose map is dim everywhere
    params = dict(delta_mean=0.35, delta_max=0.6, weight_mean=0.3, weight_max=0.9)
    loss = amc_loss(heat, mask, per_sample_mean=per_sample, **params)
    l_mean, l_max, total = _reference_amc(heat, mask, *params.values(), per_sample)
    assert l_mean > 0 and l_max > 0  # the hinges are open: every term counts
    assert loss.l_mean.item() == pytest.approx(l_mean, rel=1e-12)
    assert loss.l_max.item() == pytest.approx(l_max, rel=1e-12)
    assert loss.total.item() == pytest.approx(total, rel=1e-12)


def test_a_boolean_mask_is_a_binary_mask():
    mask = _mask(4, (1, 1, 3, 3))[None]
    heat = torch.rand(1, 4, 4, generator=torch.Generator().manual_seed(1))
    by_bool, by_float = amc_loss(heat, mask.bool()), amc_loss(heat, mask)
    assert by_bool.total.item() == pytest.approx(by_float.total.item(), rel=1e-6)
