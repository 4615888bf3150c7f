"""The ALBEF objectives' options: matching negatives, and the vision initialisation the demo relies on."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from amc.io import AmcError
from amc.models.albef import ALBEF
from amc.objectives import ImageTextMatching, TrainBatch, build_objectives
from tests.helpers import SMALL, step_context, tiny_model, train_batch


def test_random_negatives_are_uniform_over_the_other_pairs_and_skip_the_contrastive_pass():
    model = tiny_model(**SMALL)
    ctx = step_context(model, train_batch(model))
    weights_i2t, weights_t2i = ImageTextMatching(negatives="random")._negative_weights(ctx)
    expected = 1.0 - torch.eye(4)
    assert torch.equal(weights_i2t, expected) and torch.equal(weights_t2i, expected)
    assert "contrastive" not in ctx.__dict__ and "momentum" not in ctx.__dict__


def test_hard_negatives_follow_the_in_batch_contrastive_similarity():
    model = tiny_model(**SMALL)
    ctx = step_context(model, train_batch(model))
    weights_i2t, _ = ImageTextMatching()._negative_weights(ctx)
    expected = F.softmax(ctx.contrastive.sim_i2t[:, :4], dim=1) + 1e-9
    expected.fill_diagonal_(0)
    torch.testing.assert_close(weights_i2t, expected)


@pytest.mark.parametrize("negatives", ["hard", "random"])
def test_matching_loss_trains_the_head_with_either_negatives(negatives):
    model = tiny_model(**SMALL)
    (objective,) = build_objectives({"itm": {"weight": 1.0, "negatives": negatives}})
    out = objective(step_context(model, train_batch(model)))
    out.loss.backward()
    assert torch.isfinite(out.loss) and out.loss > 0
    assert model.itm_head.weight.grad.abs().sum() > 0


def test_unknown_negatives_is_an_error_that_lists_the_choices():
    with pytest.raises(AmcError, match=r"negatives must be one of \('hard', 'random'\)"):
        build_objectives({"itm": {"negatives": "semi-hard"}})


def test_vision_initializer_range_sets_the_std_of_the_linear_layers():
    base = tiny_model(**SMALL).config
    torch.manual_seed(0)
    default = ALBEF(
        base.replace(vision=base.vision.__class__(**{**vars(base.vision), "initializer_range": 0.02}))
    )
    torch.manual_seed(0)
    wide = ALBEF(
        base.replace(vision=base.vision.__class__(**{**vars(base.vision), "initializer_range": 0.2}))
    )
    qkv_default = default.visual_encoder.blocks[0].attn.qkv
    qkv_wide = wide.visual_encoder.blocks[0].attn.qkv
    assert qkv_default.weight.std().item() == pytest.approx(0.02, rel=0.15)  # timm's own init
    assert qkv_wide.weight.std().item() == pytest.approx(0.2, rel=0.1)
    assert torch.count_nonzero(qkv_wide.bias) == 0
    with pytest.raises(AmcError, match="initializer_range must be positive"):
        base.vision.__class__(initializer_range=0.0).validate()


# --------------------------------------------------------------------------- the AMC objective's wiring

AMC_KNOBS = {
    "delta_mean": 0.3,
    "delta_max": 0.7,
    "weight_mean": 0.6,
    "weight_max": 0.25,
    "per_sample_mean": True,
}
AMC_DEFAULTS = {
    "delta_mean": 0.1,
    "delta_max": 0.5,
    "weight_mean": 0.2,
    "weight_max": 0.8,
    "per_sample_mean": False,
}


def boxed_batch(model, has_box=(True, True, True, True)) -> TrainBatch:
    """The tiny batch with a box mask per sample (a different box each) and which of them count."""
    batch = train_batch(model, lengths=(6, 3, 5, 4))
    masks = torch.zeros(batch.size, 16, 16)
    for row in range(batch.size):
        masks[row, 2 * row : 2 * row + 6, 3 : 3 + 4 + row] = 1.0
    batch.box_mask, batch.has_box = masks, torch.tensor(has_box)
    return batch


def spy_on_amc_loss(monkeypatch) -> list[dict]:
    import amc.objectives

    calls, real = [], amc.objectives.amc_loss

    def spy(heatmap, mask, **kwargs):
        terms = real(heatmap, mask, **kwargs)
        calls.append({"heatmap": heatmap, "mask": mask, "kwargs": kwargs, "terms": terms})
        return terms

    monkeypatch.setattr(amc.objectives, "amc_loss", spy)
    return calls


@pytest.mark.parametrize("key", sorted(AMC_KNOBS))
def test_every_amc_hyperparameter_reaches_the_loss(key, monkeypatch):
    """method.objectives.amc.<key> changes what the loss computes (the per-sample L_mean ablation row
    included): the objective hands it on, the others stay at the released defaults."""
    calls = spy_on_amc_loss(monkeypatch)
    (objective,) = build_objectives({"amc": {key: AMC_KNOBS[key]}})
    model = tiny_model(**SMALL)
    out = objective(step_context(model, boxed_batch(model), needs_gradcam=True))
    (call,) = calls
    assert call["kwargs"] == {**AMC_DEFAULTS, key: AMC_KNOBS[key]}
    terms = call["terms"]
    assert out.loss.item() == pytest.approx(terms.total.item())
    assert out.logs == pytest.approx(
        {"loss_amc": terms.total.item(), "l_mean": terms.l_mean.item(), "l_max": terms.l_max.item()}
    )


def test_the_amc_loss_is_weighted_and_taken_on_the_boxed_samples_only(monkeypatch):
    calls = spy_on_amc_loss(monkeypatch)
    (objective,) = build_objectives({"amc": {"weight": 2.5}})
    model = tiny_model(**SMALL)
    batch = boxed_batch(model, has_box=(True, False, True, False))
    out = objective(step_context(model, batch, needs_gradcam=True))
    (call,) = calls
    assert call["heatmap"].shape == (2, 16, 16)  # the GradCAM at the mask size, boxed samples only
    assert torch.equal(call["mask"], batch.box_mask[[0, 2]])
    assert out.loss.item() == pytest.approx(2.5 * call["terms"].total.item())
    assert out.loss.requires_grad  # back-propagates through the GradCAM


def test_no_boxed_sample_gives_a_zero_amc_loss_that_still_back_propagates(monkeypatch):
    calls = spy_on_amc_loss(monkeypatch)
    (objective,) = build_objectives({"amc": {}})
    model = tiny_model(**SMALL)
    out = objective(step_context(model, boxed_batch(model, has_box=(False,) * 4), needs_gradcam=True))
    assert not calls and out.loss.item() == 0.0 and out.loss.requires_grad
    assert out.logs == {"loss_amc": 0.0, "l_mean": 0.0, "l_max": 0.0}
    with pytest.raises(AmcError, match="needs box masks"):
        objective(step_context(model, train_batch(model), needs_gradcam=True))
