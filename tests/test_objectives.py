"""The ALBEF objectives' options: matching negatives, and the vision initialisation the demo relies on."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from amc.io import AmcError
from amc.models.albef import ALBEF
from amc.objectives import ImageTextMatching, build_objectives
from tests.test_baselines import context, tiny_batch, tiny_model


def test_random_negatives_are_uniform_over_the_other_pairs_and_skip_the_contrastive_pass():
    model = tiny_model()
    ctx = context(model, tiny_batch(model))
    weights_i2t, weights_t2i = ImageTextMatching(negatives="random")._negative_weights(ctx)
    expected = 1.0 - torch.eye(4)
    assert torch.equal(weights_i2t, expected) and torch.equal(weights_t2i, expected)
    assert "contrastive" not in ctx.__dict__ and not ctx.momentum_used


def test_hard_negatives_follow_the_in_batch_contrastive_similarity():
    model = tiny_model()
    ctx = context(model, tiny_batch(model))
    weights_i2t, _ = ImageTextMatching()._negative_weights(ctx)
    expected = F.softmax(ctx.contrastive.sim_i2t[:, :4], dim=1) + 1e-9
    expected.fill_diagonal_(0)
    torch.testing.assert_close(weights_i2t, expected)
    assert ctx.momentum_used  # the contrastive similarities ran the momentum encoders


@pytest.mark.parametrize("negatives", ["hard", "random"])
def test_matching_loss_trains_the_head_with_either_negatives(negatives):
    model = tiny_model()
    (objective,) = build_objectives({"itm": {"weight": 1.0, "negatives": negatives}})
    out = objective(context(model, tiny_batch(model)))
    out.loss.backward()
    assert torch.isfinite(out.loss) and out.loss > 0
    assert model.itm_head.weight.grad.abs().sum() > 0


def test_unknown_negatives_is_an_error_that_lists_the_choices():
    with pytest.raises(AmcError, match=r"negatives must be one of \('hard', 'random'\)"):
        build_objectives({"itm": {"negatives": "semi-hard"}})


def test_vision_initializer_range_sets_the_std_of_the_linear_layers():
    base = tiny_model().config
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
