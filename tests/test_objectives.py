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
    assert "contrastive" not in ctx.__dict__ and not ctx.momentum_used


def test_hard_negatives_follow_the_in_batch_contrastive_similarity():
    model = tiny_model(**SMALL)
    ctx = step_context(model, train_batch(model))
    weights = ImageTextMatching()._negative_weights(ctx)
    for weight, sim in zip(weights, (ctx.contrastive.sim_i2t, ctx.contrastive.sim_t2i), strict=True):
        expected = F.softmax(sim[:, :4], dim=1) + 1e-9
        expected.fill_diagonal_(0)
        torch.testing.assert_close(weight, expected, rtol=0, atol=0)
    assert ctx.momentum_used  # the contrastive similarities ran the momentum encoders


def test_hard_negatives_are_drawn_when_the_positive_takes_all_the_similarity():
    """When every other pair's softmax weight is 0 in float32, the released 1e-9 keeps each row a
    distribution: a negative is still drawn (never the positive)."""
    from amc.objectives import Contrastive

    model = tiny_model(**SMALL)
    ctx = step_context(model, train_batch(model))
    sim = torch.cat([1000.0 * torch.eye(4), torch.zeros(4, 64)], dim=1)  # the positive, by far
    ctx.__dict__["contrastive"] = Contrastive(sim, sim.clone(), sim, sim)
    for weight in ImageTextMatching()._negative_weights(ctx):
        assert torch.equal(weight, 1e-9 * (1 - torch.eye(4)))
    out = ImageTextMatching()(ctx)
    assert torch.isfinite(out.loss)


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


def boxed_batch(model) -> TrainBatch:
    """The tiny batch with a box mask per sample (a different box each)."""
    batch = train_batch(model, lengths=(6, 3, 5, 4))
    masks = torch.zeros(batch.size, 16, 16)
    for row in range(batch.size):
        masks[row, 2 * row : 2 * row + 6, 3 : 3 + 4 + row] = 1.0
    batch.box_mask = masks
    return batch


def spy_on_amc_loss(monkeypatch) -> list[dict]:
    import amc.objectives.amc

    calls, real = [], amc.objectives.amc.amc_loss

    def spy(heatmap, mask, **kwargs):
        terms = real(heatmap, mask, **kwargs)
        calls.append({"heatmap": heatmap, "mask": mask, "kwargs": kwargs, "terms": terms})
        return terms

    monkeypatch.setattr(amc.objectives.amc, "amc_loss", spy)
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


def test_the_amc_loss_is_weighted_and_taken_on_every_sample_with_its_own_box(monkeypatch):
    calls = spy_on_amc_loss(monkeypatch)
    (objective,) = build_objectives({"amc": {"weight": 2.5}})
    model = tiny_model(**SMALL)
    batch = boxed_batch(model)
    out = objective(step_context(model, batch, needs_gradcam=True))
    (call,) = calls
    assert call["heatmap"].shape == (4, 16, 16)  # the GradCAM at the mask size, one per sample
    assert torch.equal(call["mask"], batch.box_mask)
    assert out.loss.item() == pytest.approx(2.5 * call["terms"].total.item())
    assert out.loss.requires_grad  # back-propagates through the GradCAM
    with pytest.raises(
        AmcError, match=r"^the amc objective needs box masks: train on records \(data.kind: records\)$"
    ):
        objective(step_context(model, train_batch(model), needs_gradcam=True))


# --------------------------------------------------------------------------- the ALBEF objectives' formulas


def test_contrastive_loss_with_momentum_distillation_and_the_queue():
    """As released: online features against the momentum features of the batch and the queues,
    targets alpha * softmax(momentum similarities) + (1 - alpha) * one-hot; the temperature is
    clamped to [0.001, 0.5] first."""
    model = tiny_model(**SMALL)
    with torch.no_grad():
        model.temp.fill_(0.9)
    batch = train_batch(model)
    ctx = step_context(model, batch, alpha=0.3)
    (objective,) = build_objectives({"itc": {"weight": 1.5}})
    out = objective(ctx)
    assert model.temp.item() == pytest.approx(0.5)
    with torch.no_grad():
        image_m = model.image_feat(model.encode_image_m(batch.image), momentum=True)
        text_m = model.text_feat(
            model.encode_text(batch.input_ids, batch.attention_mask, momentum=True), momentum=True
        )
        image_all = torch.cat([image_m.t(), model.image_queue], dim=1)
        text_all = torch.cat([text_m.t(), model.text_queue], dim=1)
        one_hot = torch.zeros(4, 4 + 64)
        one_hot[:, :4] = torch.eye(4)
        targets_i2t = 0.3 * F.softmax(image_m @ text_all / 0.5, dim=1) + 0.7 * one_hot
        targets_t2i = 0.3 * F.softmax(text_m @ image_all / 0.5, dim=1) + 0.7 * one_hot
        image = model.image_feat(model.encode_image(batch.image))
        text = model.text_feat(model.encode_text(batch.input_ids, batch.attention_mask))
        i2t = -(F.log_softmax(image @ text_all / 0.5, dim=1) * targets_i2t).sum(1).mean()
        t2i = -(F.log_softmax(text @ image_all / 0.5, dim=1) * targets_t2i).sum(1).mean()
    expected = (i2t + t2i) / 2
    assert out.logs["loss_itc"] == pytest.approx(expected.item(), rel=1e-5)
    assert out.loss.item() == pytest.approx(1.5 * expected.item(), rel=1e-5)
    assert ctx.momentum_used
    with torch.no_grad():
        model.temp.fill_(1e-5)
    objective(step_context(model, batch))
    assert model.temp.item() == pytest.approx(0.001)


def test_in_batch_contrastive_loss_uses_no_momentum_model_and_no_queue():
    model = tiny_model(**SMALL)
    batch = train_batch(model)
    ctx = step_context(model, batch)
    out = build_objectives({"itc": {"mode": "in_batch", "weight": 2.0}})[0](ctx)
    with torch.no_grad():
        image = model.image_feat(model.encode_image(batch.image))
        text = model.text_feat(model.encode_text(batch.input_ids, batch.attention_mask))
        sim = image @ text.t() / model.temp
        targets = torch.arange(4)
        expected = (F.cross_entropy(sim, targets) + F.cross_entropy(sim.t(), targets)) / 2
    assert out.logs["loss_itc"] == pytest.approx(expected.item(), rel=1e-5)
    assert out.loss.item() == pytest.approx(2 * expected.item(), rel=1e-5)
    assert not ctx.momentum_used
    with pytest.raises(AmcError, match=r"^itc: mode must be one of \('albef', 'in_batch'\), got 'clip'$"):
        build_objectives({"itc": {"mode": "clip"}})


def test_matching_loss_scores_positives_then_one_negative_image_and_one_negative_text_per_pair():
    model = tiny_model(**SMALL)
    batch = train_batch(model)
    objective = ImageTextMatching(weight=0.5, negatives="random")
    out = objective(step_context(model, batch))
    # the same draws, by hand: negative images for the texts first, then negative texts
    generator = torch.Generator().manual_seed(0)
    weights = 1.0 - torch.eye(4)
    neg_image = torch.multinomial(weights, 1, generator=generator).squeeze(1)
    neg_text = torch.multinomial(weights, 1, generator=generator).squeeze(1)
    with torch.no_grad():
        image = model.encode_image(batch.image)
        text = model.encode_text(batch.input_ids, batch.attention_mask)
        mask = batch.attention_mask
        positives = model.fuse(text, mask, image).hidden_states[:, 0]
        negatives = model.fuse(
            torch.cat([text, text[neg_text]]),
            torch.cat([mask, mask[neg_text]]),
            torch.cat([image[neg_image], image]),
        ).hidden_states[:, 0]
        logits = model.itm_logits(torch.cat([positives, negatives]))
        expected = F.cross_entropy(logits, torch.tensor([1] * 4 + [0] * 8))
    assert (neg_image != torch.arange(4)).all() and (neg_text != torch.arange(4)).all()
    assert out.logs["loss_itm"] == pytest.approx(expected.item(), rel=1e-5)
    assert out.loss.item() == pytest.approx(0.5 * expected.item(), rel=1e-5)
    with pytest.raises(AmcError, match="^the matching objective needs at least 2 pairs per batch"):
        objective(step_context(model, train_batch(model, lengths=(3,))))
    two = objective(step_context(model, train_batch(model, lengths=(3, 5))))  # two pairs are enough
    assert torch.isfinite(two.loss)


def test_bert_masking_never_touches_padding_or_cls_and_splits_80_10_10():
    from amc.objectives import mask_tokens

    ids = torch.randint(5, 500, (64, 50), generator=torch.Generator().manual_seed(0))
    ids[:, 0] = 2
    ids[:, 40:] = 0
    masked, labels = mask_tokens(
        ids, {"pad": 0, "cls": 2, "mask": 4}, 512, 1.0, torch.Generator().manual_seed(1)
    )
    chosen = labels != -100
    assert torch.equal(chosen, ids.ne(0) & ids.ne(2))  # probability 1: every other token
    assert torch.equal(labels[chosen], ids[chosen]) and torch.equal(masked[~chosen], ids[~chosen])
    to_mask = (masked == 4) & chosen
    kept = (masked == ids) & chosen
    random = chosen & ~to_mask & ~kept
    n = int(chosen.sum())
    assert 0.77 < to_mask.sum() / n < 0.83 and 0.07 < random.sum() / n < 0.13 and 0.07 < kept.sum() / n < 0.13
    assert masked.max() < 512 and masked.min() >= 0
    none, none_labels = mask_tokens(
        ids, {"pad": 0, "cls": 2, "mask": 4}, 512, 0.0, torch.Generator().manual_seed(1)
    )
    assert torch.equal(none, ids) and (none_labels == -100).all()
    some, some_labels = mask_tokens(
        ids, {"pad": 0, "cls": 2, "mask": 4}, 512, 0.15, torch.Generator().manual_seed(1)
    )
    assert 0.12 < (some_labels != -100).sum() / int(chosen.sum()) < 0.18


def test_masked_language_modelling_distils_from_the_momentum_model_with_weight_alpha():
    from amc.objectives import MaskedLanguageModelling, mask_tokens

    model = tiny_model(**SMALL)
    with torch.no_grad():  # a momentum model that differs, so the distillation term has something to say
        for _, momentum in model.model_pairs:
            for param in momentum.parameters():
                param.mul_(0.5)
    batch = train_batch(model, lengths=(9, 9, 9, 9))
    objective = MaskedLanguageModelling(weight=3.0, probability=0.5)
    losses, momentum_used = {}, {}
    for alpha in (0.0, 0.4, 1.0):
        ctx = step_context(model, batch, alpha=alpha)
        losses[alpha] = objective(ctx).logs["loss_mlm"]
        momentum_used[alpha] = ctx.momentum_used
    assert momentum_used == {0.0: False, 0.4: True, 1.0: True}  # alpha 0: no momentum pass at all
    ids, labels = mask_tokens(
        batch.input_ids, {"pad": 0, "cls": 2, "mask": 4}, 512, 0.5, torch.Generator().manual_seed(0)
    )
    selected = labels != -100
    with torch.no_grad():
        image = model.encode_image(batch.image)
        logits = model.mlm_logits(
            model.fuse(
                model.encode_text(ids, batch.attention_mask), batch.attention_mask, image
            ).hidden_states
        )
        ce = F.cross_entropy(logits[selected], labels[selected])
        image_m = model.encode_image_m(batch.image)
        text_m = model.encode_text(ids, batch.attention_mask, momentum=True)
        soft = F.softmax(
            model.mlm_logits(
                model.fuse(text_m, batch.attention_mask, image_m, momentum=True).hidden_states, momentum=True
            ),
            dim=-1,
        )
        distill = -(F.log_softmax(logits[selected], dim=-1) * soft[selected]).sum(-1).mean()
    assert losses[0.0] == pytest.approx(ce.item(), rel=1e-5)
    assert losses[0.4] == pytest.approx((0.6 * ce + 0.4 * distill).item(), rel=1e-5)
    assert losses[1.0] == pytest.approx(distill.item(), rel=1e-5)
    out = objective(step_context(model, batch, alpha=0.4))
    assert out.loss.item() == pytest.approx(3.0 * losses[0.4], rel=1e-6)
    nothing = MaskedLanguageModelling(probability=0.0)(step_context(model, batch))
    assert nothing.loss.item() == 0.0 and nothing.loss.requires_grad and nothing.logs == {"loss_mlm": 0.0}


def test_objectives_are_switched_off_by_null_enabled_false_or_weight_0():
    names = [
        o.name
        for o in build_objectives({"itc": None, "itm": {"enabled": False}, "mlm": {"weight": 0}, "amc": {}})
    ]
    assert names == ["amc"]
    (itm,) = build_objectives({"itm": {"enabled": True, "weight": 2}})
    assert itm.weight == 2.0 and isinstance(itm.weight, float) and itm.negatives == "hard"
    with pytest.raises(AmcError, match=r"^unknown objective 'itx'; registered: amc, itc, itm, mlm\b"):
        build_objectives({"itx": {}})
    with pytest.raises(AmcError, match=r"^objective 'itc': .*unexpected keyword argument 'temperature'"):
        build_objectives({"itc": {"temperature": 0.1}})
    with pytest.raises(AmcError, match="^the method has no objective enabled$"):
        build_objectives({"itc": None, "amc": {"weight": 0.0}})


def test_every_objective_weighs_1_unless_told():
    spec = {
        "itc": {},
        "itm": {},
        "mlm": {},
        "amc": {},
        "vmrm_contrastive": {"class": "baselines.vmrm_style:VmrmContrastive"},
        "vmrm_consistency": {"class": "baselines.vmrm_style:VmrmConsistency"},
    }
    assert [(o.name, o.weight) for o in build_objectives(spec)] == [(name, 1.0) for name in spec]


def test_an_objective_name_is_registered_once():
    from amc.objectives import OBJECTIVES, Objective, register_objective

    assert register_objective("itc")(OBJECTIVES["itc"]) is OBJECTIVES["itc"]  # the same class again: fine
    with pytest.raises(ValueError, match="^objective 'itc' registered twice$"):
        register_objective("itc")(type("Other", (Objective,), {}))
