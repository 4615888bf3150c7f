"""Baselines: the VMRM-style objectives, their frozen teacher, the workflow's baseline methods, and baseline
runs on `ci` data."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from amc import grid
from amc.io import AmcError
from amc.objectives import TrainBatch, build_objectives
from amc.run_config import OptimConfig, load_run_config
from amc.train import TrainingStep, build_optimizer
from baselines.vmrm_style import (
    VmrmConsistency,
    VmrmContrastive,
    caption_map,
    consistency_loss,
    content_tokens,
    contrastive_loss,
    frozen_teacher,
    phrase_patch_maps,
    pseudo_targets,
    token_patch_cosine,
)
from tests.helpers import (
    REPO,
    SMALL,
    SPECIAL_IDS,
    TINY_MODEL,
    run_amc,
    step_context,
    tiny_model,
    train_batch,
)

ALBEF_OBJECTIVES = {  # what `amc pretrain` trains the starting checkpoint with
    "itc": {"weight": 1.0},
    "itm": {"weight": 1.0},
    "mlm": {"weight": 1.0, "probability": 0.15},
}

# --------------------------------------------------------------------------- tiny model and batch


def grad_norms(module: torch.nn.Module, prefix: str) -> float:
    return sum(
        float(p.grad.norm())
        for n, p in module.named_parameters()
        if n.startswith(prefix) and p.grad is not None
    )


# --------------------------------------------------------------------------- the losses on hand-built cases


def test_content_tokens_drop_cls_and_padding():
    ids = torch.tensor([[2, 7, 8, 0], [2, 9, 0, 0], [2, 0, 0, 0]])
    mask = (ids != 0).long()
    expected = torch.tensor([[0, 1, 1, 0], [0, 1, 0, 0], [0, 0, 0, 0]], dtype=torch.bool)
    assert torch.equal(content_tokens(ids, mask, SPECIAL_IDS), expected)


def test_content_tokens_drop_every_special_token_and_the_first_position():
    special = {"pad": 0, "cls": 2, "sep": 3, "mask": 4}
    ids = torch.tensor(
        [[7, 8, 3, 9, 4, 2, 6, 0]]
    )  # position 0 is not [CLS] here; [SEP], [MASK], [CLS] inside
    mask = torch.ones_like(ids)  # by their ids alone, [PAD] included
    expected = torch.tensor([[0, 1, 0, 1, 0, 0, 1, 0]], dtype=torch.bool)
    assert torch.equal(content_tokens(ids, mask, special), expected)


def test_token_patch_cosine_projects_and_normalises_both_sides():
    model = tiny_model(**SMALL)
    states, image = torch.randn(2, 5, 64), torch.randn(2, 17, 64)  # [CLS] + a 4x4 patch grid
    cos = token_patch_cosine(model, states, image)
    with torch.no_grad():
        tokens = model.text_proj(states)
        patches = model.vision_proj(image[:, 1:])
        expected = (tokens / tokens.norm(dim=-1, keepdim=True)) @ (
            patches / patches.norm(dim=-1, keepdim=True)
        ).transpose(1, 2)
    assert cos.shape == (2, 5, 16)
    torch.testing.assert_close(cos, expected, rtol=1e-5, atol=1e-6)


def test_caption_maps_average_each_captions_own_content_tokens():
    cos = torch.arange(24, dtype=torch.float32).reshape(2, 3, 4)
    content = torch.tensor([[True, True, False], [False, True, False]])  # 2 tokens, then 1
    expected = torch.stack([(cos[0, 0] + cos[0, 1]) / 2, cos[1, 1]])
    assert torch.equal(caption_map(cos, content), expected)
    # a caption without content tokens: a zero map, and the loss is the mean over the others
    empty = torch.tensor([[True, True, False], [False, False, False]])
    student, teacher = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    both = consistency_loss(student, teacher, empty, 0.5, 0.5, "caption")
    first = consistency_loss(student[:1], teacher[:1], empty[:1], 0.5, 0.5, "caption")
    assert both.item() == pytest.approx(first.item(), rel=1e-6)


def test_pseudo_targets_are_over_the_patches_of_each_token():
    teacher = torch.tensor(
        [[[0.1, 0.9, 0.3, 0.5], [0.8, 0.2, 0.0, 0.4], [0.0, 0.1, 0.2, 0.3]]]
    )  # [1, 3 tokens, 4]
    soft = pseudo_targets(teacher, "soft", 1, 0.5)
    torch.testing.assert_close(soft, F.softmax(teacher / 0.5, dim=2))
    everything = pseudo_targets(teacher, "topk", 10, 0.03)  # k > 4 patches: uniform over the 4
    assert torch.equal(everything, torch.full((1, 3, 4), 0.25))


def test_pseudo_targets_topk_and_soft():
    teacher = torch.tensor([[0.1, 0.9, 0.3, 0.5]])
    assert torch.equal(pseudo_targets(teacher, "topk", 1, 0.03), torch.tensor([[0.0, 1.0, 0.0, 0.0]]))
    assert torch.equal(pseudo_targets(teacher, "topk", 2, 0.03), torch.tensor([[0.0, 0.5, 0.0, 0.5]]))
    assert torch.allclose(pseudo_targets(teacher, "topk", 10, 0.03), torch.full((1, 4), 0.25))  # k > N: all
    soft = pseudo_targets(teacher, "soft", 1, 0.5)
    assert torch.allclose(soft, F.softmax(teacher / 0.5, dim=-1))
    sharper = pseudo_targets(teacher, "soft", 1, 0.05)
    assert sharper[0, 1] > soft[0, 1] and torch.allclose(sharper.sum(-1), torch.ones(1))


def test_contrastive_loss_is_the_cross_entropy_toward_the_pseudo_pair():
    # One caption, two content tokens and one padding token whose garbage must not count.
    student = torch.tensor([[[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 2.0, 0.0], [9.0, -9.0, 9.0, -9.0]]])
    teacher = torch.tensor([[[0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0]]])
    content = torch.tensor([[True, True, False]])
    targets = pseudo_targets(teacher, "topk", 1, 0.03)
    # -log softmax(s)[2]: token 0 puts its mass elsewhere, token 1 on the pseudo-pair patch.
    expected_0 = math.log(math.e + 3)
    expected_1 = math.log(math.exp(2) + 3) - 2
    loss = contrastive_loss(student, targets, content, temperature=1.0)
    assert loss.item() == pytest.approx((expected_0 + expected_1) / 2, rel=1e-6)
    # The temperature divides the similarities.
    loss_t = contrastive_loss(student, targets, content, temperature=0.5)
    assert loss_t.item() == pytest.approx(
        contrastive_loss(student * 2, targets, content, 1.0).item(), rel=1e-6
    )


def test_contrastive_gradient_moves_mass_onto_the_pseudo_pair():
    student = torch.zeros(1, 1, 4, requires_grad=True)
    targets = torch.tensor([[[0.0, 0.0, 1.0, 0.0]]])
    contrastive_loss(student, targets, torch.tensor([[True]]), temperature=1.0).backward()
    # d CE / d logits = softmax - target = 0.25 - [0, 0, 1, 0]
    assert torch.allclose(student.grad, torch.tensor([[[0.25, 0.25, -0.75, 0.25]]]))


def test_consistency_is_zero_with_zero_gradient_when_student_equals_teacher():
    teacher = torch.randn(2, 3, 5)
    student = teacher.clone().requires_grad_(True)
    content = torch.tensor([[True, True, False], [True, False, False]])
    for aggregate in ("caption", "token"):
        loss = consistency_loss(student, teacher, content, 0.07, 0.07, aggregate)
        (grad,) = torch.autograd.grad(loss, student)
        assert abs(loss.item()) < 1e-6
        assert grad.abs().max().item() < 1e-5


def test_consistency_is_the_kl_of_the_caption_maps():
    student = torch.tensor([[[1.0, 0.0], [0.0, 0.0], [5.0, -5.0]]])  # token 2 is padding
    teacher = torch.tensor([[[0.0, 1.0], [0.0, 1.0], [-5.0, 5.0]]])
    content = torch.tensor([[True, True, False]])
    p = F.softmax(torch.tensor([0.0, 1.0]), dim=0)  # teacher caption map: mean of tokens 0 and 1
    q = F.softmax(torch.tensor([0.5, 0.0]), dim=0)  # student caption map
    expected = float((p * (p.log() - q.log())).sum())
    loss = consistency_loss(student, teacher, content, 1.0, 1.0, "caption")
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    # Per token: the mean of the two tokens' KLs.
    q0, q1 = F.softmax(torch.tensor([1.0, 0.0]), 0), F.softmax(torch.tensor([0.0, 0.0]), 0)
    per_token = [float((p1 * (p1.log() - q_.log())).sum()) for p1, q_ in ((p, q0), (p, q1))]
    assert consistency_loss(student, teacher, content, 1.0, 1.0, "token").item() == pytest.approx(
        sum(per_token) / 2, rel=1e-6
    )


# --------------------------------------------------------------------------- the frozen teacher


def test_teacher_is_a_frozen_copy_outside_the_trained_model():
    model = tiny_model(**SMALL)
    keys_before = set(model.state_dict())
    contrastive, consistency = VmrmContrastive(), VmrmConsistency()
    model.train()
    contrastive.setup(model)
    consistency.setup(model)
    teacher = contrastive.teacher
    assert consistency.teacher is teacher  # one shared copy
    assert not teacher.training and all(not p.requires_grad for p in teacher.parameters())
    assert teacher.text_encoder_m is None and teacher.image_queue is None  # unused parts dropped
    step = TrainingStep(model, [contrastive, consistency], SPECIAL_IDS)
    trained = {id(p) for p in step.parameters()}
    assert not trained & {id(p) for p in teacher.parameters()}
    optimizer = build_optimizer(
        model, OptimConfig.from_defaults(lr=1e-3, weight_decay=0.02), torch.device("cpu")
    )
    optimised = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert not optimised & {id(p) for p in teacher.parameters()}
    assert set(model.state_dict()) == keys_before and set(step.state_dict()) == {
        f"model.{k}" for k in keys_before
    }
    # The student's weights at setup (minus the dropped parts), in separate storage.
    student_state = model.state_dict()
    for name, value in teacher.state_dict().items():
        assert torch.equal(value, student_state[name]), name
        assert value.data_ptr() != student_state[name].data_ptr(), name


def test_objectives_on_a_tiny_model_student_equals_teacher():
    """At the start (student == teacher, no dropout): the consistency term and its gradient are ~0;
    the contrastive term is positive and its gradient reaches the fusion, text, image encoder and
    projections, never the teacher."""
    model = tiny_model(**SMALL)
    contrastive, consistency = VmrmContrastive(), VmrmConsistency()
    contrastive.setup(model)
    consistency.setup(model)
    batch = train_batch(model)
    ctx = step_context(model, batch)

    out = consistency(ctx)
    assert out.logs["loss_vmrm_consistency"] == pytest.approx(0.0, abs=1e-5)
    out.loss.backward(retain_graph=True)
    assert max(p.grad.abs().max().item() for p in model.parameters() if p.grad is not None) < 1e-5
    model.zero_grad(set_to_none=True)

    out = contrastive(ctx)
    n_patches = model.image_grid[0] * model.image_grid[1]
    assert 0.0 < out.logs["loss_vmrm_contrastive"] < 2 * math.log(n_patches) / 0.07
    assert out.logs["vmrm_top1_agreement"] == 1.0  # the student's best patch is the pseudo-pair
    out.loss.backward()
    fusion = model.fusion_layer
    for prefix in (
        "text_proj.",
        "vision_proj.",
        f"text_encoder.bert.encoder.layer.{fusion}.",  # a fusion layer (cross-attention included)
        "text_encoder.bert.encoder.layer.0.",  # a text-only layer
        "text_encoder.bert.embeddings.",
        "visual_encoder.",
    ):
        assert grad_norms(model, prefix) > 0, prefix
    assert all(p.grad is None for p in contrastive.teacher.parameters())
    assert grad_norms(model, "visual_encoder_m.") == 0 and grad_norms(model, "itm_head.") == 0


def test_teacher_does_not_follow_the_student():
    model = tiny_model(**SMALL)
    consistency = VmrmConsistency(aggregate="token")
    consistency.setup(model)
    batch = train_batch(model)
    teacher_before = consistency.maps(step_context(model, batch)).teacher
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    maps = consistency.maps(step_context(model, batch))
    assert torch.equal(maps.teacher, teacher_before)
    assert consistency(step_context(model, batch)).logs["loss_vmrm_consistency"] > 1e-4


def test_text_token_source_uses_the_text_only_states():
    model = tiny_model(**SMALL)
    objective = VmrmContrastive(token_source="text", target="soft", target_temperature=0.05)
    objective.setup(model)
    out = objective(step_context(model, train_batch(model)))
    out.loss.backward()
    # Nothing after the text-only layers is on the path.
    assert grad_norms(model, f"text_encoder.bert.encoder.layer.{model.fusion_layer}.") == 0
    assert grad_norms(model, "text_proj.") > 0 and grad_norms(model, "visual_encoder.") > 0


def test_batch_without_content_tokens_gives_zero():
    model = tiny_model(**SMALL)
    for objective, key in (
        (VmrmContrastive(), "loss_vmrm_contrastive"),
        (VmrmConsistency(), "loss_vmrm_consistency"),
    ):
        objective.setup(model)
        out = objective(step_context(model, train_batch(model, lengths=(1, 1))))
        assert out.loss.item() == 0.0 and out.loss.requires_grad and out.logs == {key: 0.0}


def test_the_objectives_compute_their_documented_losses():
    """Through the objectives: the weight times contrastive_loss / consistency_loss of the step's
    maps, with the configured target, temperatures and aggregate; content tokens only."""
    model = tiny_model(**SMALL)
    with torch.no_grad():  # a student that differs from its teacher
        teacher_model = tiny_model(**SMALL)
        for param in model.parameters():
            param.add_(0.05 * torch.randn_like(param))
    batch = train_batch(model)
    contrastive = VmrmContrastive(weight=2.5, target="soft", target_temperature=0.2, temperature=0.3)
    consistency = VmrmConsistency(weight=1.5, temperature=0.2, target_temperature=0.4, aggregate="caption")
    for objective in (contrastive, consistency):
        objective.teacher = frozen_teacher(teacher_model)
    ctx = step_context(model, batch)
    maps = phrase_patch_maps(ctx, contrastive.teacher, "fused")
    out = contrastive(ctx)
    expected = contrastive_loss(maps.student, pseudo_targets(maps.teacher, "soft", 1, 0.2), maps.content, 0.3)
    assert out.logs["loss_vmrm_contrastive"] == pytest.approx(expected.item(), rel=1e-6)
    assert out.loss.item() == pytest.approx(2.5 * expected.item(), rel=1e-6)
    out = consistency(ctx)
    expected = consistency_loss(maps.student, maps.teacher, maps.content, 0.2, 0.4, "caption")
    assert out.logs["loss_vmrm_consistency"] == pytest.approx(expected.item(), rel=1e-6)
    assert out.loss.item() == pytest.approx(1.5 * expected.item(), rel=1e-6)
    assert expected.item() != pytest.approx(
        consistency_loss(maps.student, maps.teacher, maps.content, 0.2, 0.4, "token").item()
    )


def test_the_maps_of_a_step_are_made_once_per_token_source():
    model = tiny_model(**SMALL)
    teacher = frozen_teacher(model)
    batch = train_batch(model)
    batch.input_ids[0, 2] = SPECIAL_IDS["mask"]  # a [MASK] inside a caption is not a content token
    ctx = step_context(model, batch)
    fused = phrase_patch_maps(ctx, teacher, "fused")
    assert phrase_patch_maps(ctx, teacher, "fused") is fused  # both objectives share one teacher pass
    text = phrase_patch_maps(ctx, teacher, "text")
    assert text is not fused and phrase_patch_maps(ctx, teacher, "text") is text
    assert not fused.content[0, 2] and fused.content[0, 1]
    # at the start the student is the teacher: the same maps from the same states
    torch.testing.assert_close(text.teacher, text.student.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fused.teacher, fused.student.detach(), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(text.teacher, fused.teacher)


def test_the_teacher_copy_is_logged_with_its_size(caplog):
    model = tiny_model(**SMALL)
    with caplog.at_level("INFO", logger="baselines.vmrm_style"):
        teacher = frozen_teacher(model)
    n_params = sum(p.numel() for p in teacher.parameters())
    assert f"frozen teacher copy of the starting model made ({n_params} parameters" in caplog.text


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_teacher_moves_with_the_student():
    model = tiny_model(**SMALL)
    objective = VmrmConsistency()
    objective.setup(model)  # teacher made on the CPU
    model.cuda()
    batch = train_batch(model)
    batch = TrainBatch(batch.image.cuda(), batch.input_ids.cuda(), batch.attention_mask.cuda())
    out = objective(step_context(model, batch))
    assert next(objective.teacher.parameters()).is_cuda and out.loss.is_cuda


# --------------------------------------------------------------------------- switching terms, configuration


def test_terms_switch_off_one_by_one():
    spec = {"itc": {}, "vmrm_contrastive": {"enabled": False}, "vmrm_consistency": {"weight": 1.0}}
    names = [o.name for o in build_objectives(spec)]
    assert names == ["itc", "vmrm_consistency"]
    assert [o.name for o in build_objectives({"itc": {}, "vmrm_contrastive": None})] == ["itc"]
    # Weight 0: kept by build_objectives, but inert: no teacher, no loss, no log.
    model = tiny_model(**SMALL)
    for off in (VmrmContrastive(weight=0), VmrmConsistency(weight=0)):
        off.setup(model)
        assert off.teacher is None
        out = off(step_context(model, train_batch(model)))
        assert out.loss.item() == 0.0 and out.logs == {} and not out.loss.requires_grad
    with pytest.raises(
        AmcError, match=r"^objective 'vmrm_consistency' \(VMRM-style\): setup\(model\) was not called"
    ):
        VmrmConsistency()(step_context(model, train_batch(model)))


def test_a_full_training_step_logs_both_terms():
    model = tiny_model(**SMALL).train()
    vmrm = workflow_method("vmrm_style")
    spec = load_run_config(vmrm.base, vmrm.overrides).method.objectives
    spec["mlm"] = {"probability": 0.5}
    objectives = build_objectives(spec)
    for objective in objectives:
        objective.setup(model)
    step = TrainingStep(model, objectives, SPECIAL_IDS)
    out = step(train_batch(model, lengths=(6, 3, 5, 4)), 0.4, torch.Generator().manual_seed(0))
    loss, logs = out.loss, out.logs
    loss.backward()
    assert {"loss_itc", "loss_itm", "loss_mlm", "loss_vmrm_contrastive", "loss_vmrm_consistency"} <= set(logs)
    assert math.isfinite(loss.item())


@pytest.mark.parametrize(
    ("name", "params", "message"),
    [
        ("vmrm_contrastive", {"target": "hard"}, "target must be one of ('topk', 'soft'), not 'hard'"),
        ("vmrm_contrastive", {"top_k": 0}, "top_k must be an integer >= 1, got 0"),
        ("vmrm_contrastive", {"temperature": 0.0}, "temperature must be positive, got 0.0"),
        (
            "vmrm_contrastive",
            {"token_source": "image"},
            "token_source must be one of ('fused', 'text'), not 'image'",
        ),
        ("vmrm_contrastive", {"target_temperature": -1.0}, "target_temperature must be positive, got -1.0"),
        (
            "vmrm_consistency",
            {"aggregate": "image"},
            "aggregate must be one of ('caption', 'token'), not 'image'",
        ),
        ("vmrm_consistency", {"target_temperature": 0}, "target_temperature must be positive, got 0"),
        ("vmrm_consistency", {"temperature": -2}, "temperature must be positive, got -2"),
    ],
)
def test_bad_hyperparameters_are_errors_that_name_them(name, params, message):
    with pytest.raises(AmcError, match=f"^objective '{name}': {re.escape(message)}$"):
        build_objectives({name: params})


def test_bad_consistency_hyperparameters_are_errors():
    with pytest.raises(AmcError, match="vmrm_consistency"):
        build_objectives({"vmrm_consistency": {"top_k": 3}})  # not a consistency hyperparameter


def test_the_documented_defaults_and_a_given_target_temperature():
    """docs/baselines.md: temperature 0.07 both, top_k 1, target_temperature 0.03 (contrastive) and
    null = the temperature (consistency)."""
    contrastive, consistency = build_objectives({"vmrm_contrastive": {}, "vmrm_consistency": {}})
    assert (contrastive.temperature, contrastive.target, contrastive.top_k) == (0.07, "topk", 1)
    assert (contrastive.target_temperature, contrastive.token_source) == (0.03, "fused")
    assert (consistency.temperature, consistency.target_temperature, consistency.aggregate) == (
        0.07,
        0.07,
        "caption",
    )
    assert VmrmConsistency(temperature=0.1, target_temperature=0.5).target_temperature == 0.5


@dataclass
class WorkflowMethod:
    """A method as the workflow trains it (amc.grid): ``amc train --config base`` + ``overrides``."""

    entry: dict  # the expanded entry of the configuration's ``methods``
    base: Path  # the base run configuration (finetune.config)
    overrides: list[str]  # what makes the method: method.name, method.objectives.*, data.kind


def workflow_method(name: str, config_file: str = "config.yaml") -> WorkflowMethod:
    config = grid.load_config(str(REPO / "config" / config_file))
    overrides = [a for a in grid.train_overrides(config, name, 0) if a.startswith(("method.", "data.kind="))]
    return WorkflowMethod(grid.expand_methods(config)[name], REPO / config["finetune"]["config"], overrides)


@pytest.mark.parametrize("config_file", ["config.yaml", "demo.yaml"])
def test_the_workflow_baselines_resolve_into_run_configurations(config_file):
    methods = grid.expand_methods(grid.load_config(str(REPO / "config" / config_file)))
    assert {"albef", "albef_vg", "vmrm_style"} <= set(methods)
    assert "VMRM-style" in methods["vmrm_style"]["label"]
    assert methods["albef"]["kind"] == "none"  # the starting checkpoint, evaluated as it is: no training run
    paths = ["model_config=m.yaml", "vocab=v.txt", "data.path=d.jsonl"]
    method = workflow_method("albef_vg", config_file)
    albef_vg = load_run_config(method.base, [*method.overrides, *paths])
    assert set(albef_vg.method.objectives) == {"itc", "itm", "mlm"}
    assert albef_vg.data.kind == "records" and albef_vg.method.name == "albef_vg"
    method = workflow_method("vmrm_style", config_file)
    vmrm = load_run_config(method.base, [*method.overrides, *paths])
    assert vmrm.data.kind == "captions"
    names = [o.name for o in build_objectives(vmrm.method.objectives)]
    assert names == ["itc", "itm", "mlm", "vmrm_contrastive", "vmrm_consistency"]


def test_frozen_teacher_is_made_once_per_model():
    model = tiny_model(**SMALL)
    assert frozen_teacher(model) is frozen_teacher(model)
    assert frozen_teacher(tiny_model(**SMALL)) is not frozen_teacher(model)


# --------------------------------------------------------------------------- baseline runs on the `ci` synthetic set


def _weights(path: Path) -> dict[str, torch.Tensor]:
    state = torch.load(path, map_location="cpu", weights_only=False)
    return state.get("model", state)


def _changed(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> set[str]:
    return {k for k, v in before.items() if v.is_floating_point() and not torch.equal(v, after[k])}


@pytest.fixture(scope="module")
def baseline_start(ci_data, tmp_path_factory):
    """The shared ci data, and a starting checkpoint from `amc pretrain` (2 steps) at 32 px."""
    root = tmp_path_factory.mktemp("baselines")
    common = [
        f"model_config={TINY_MODEL}",
        f"vocab={ci_data.vocab / 'vocab.txt'}",
        "data.image_res=32",
        "data.mask_size=32",
        "optim.batch_size=8",
        "optim.schedule=cosine",
        "optim.warmup_steps=0",
        "optim.lr=1.0e-3",
        "num_workers=0",
        "log_every=1",
    ]
    pretrain = root / "pretrain"
    run_amc(
        "pretrain",
        "--out",
        pretrain,
        *common,
        "init_checkpoint=null",
        "data.kind=captions",
        f"data.path={ci_data.captions}",
        f"method.objectives={json.dumps(ALBEF_OBJECTIVES)}",
        "method.name=pretrain",
        "optim.max_steps=2",
    )
    return {
        "root": root,
        "start": pretrain / "checkpoint_final.pt",
        "common": common,
        "data": {"records": ci_data.vg_train, "captions": ci_data.captions},
        "records": ci_data.vg_train,
        "vocab": ci_data.vocab / "vocab.txt",
    }


@pytest.mark.slow
@pytest.mark.parametrize("name", ["albef_vg", "vmrm_style"])
def test_finetuned_baseline_runs_on_ci_data_and_changes_the_weights(baseline_start, name):
    out = baseline_start["root"] / name
    method = workflow_method(name, "demo.yaml")  # the demo's method on the demo's base run configuration
    kind = method.entry["data"].get("kind", "records")
    run_amc(
        "train",
        "--config",
        method.base,
        "--out",
        out,
        *baseline_start["common"],
        f"init_checkpoint={baseline_start['start']}",
        f"data.path={baseline_start['data'][kind]}",
        "optim.max_steps=3",
        *method.overrides,
    )
    before, after = _weights(baseline_start["start"]), _weights(out / "checkpoint_final.pt")
    assert set(after) == set(before)  # no teacher (nor anything else) added to the checkpoint
    changed = _changed(before, after)
    assert any(k.startswith("text_proj.") for k in changed) and any(
        k.startswith("visual_encoder.") for k in changed
    )
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["step"] == 3
    logged = set(metrics[-1])
    assert {"loss_itc", "loss_itm", "loss_mlm"} <= logged and "loss_amc" not in logged
    if name == "vmrm_style":
        assert {"loss_vmrm_contrastive", "loss_vmrm_consistency"} <= logged
    else:
        assert not any(k.startswith("loss_vmrm") for k in logged)


@pytest.mark.slow
def test_albef_baseline_does_not_train(baseline_start, tmp_path):
    """`albef` is the starting checkpoint itself: evaluating it leaves its weights as they are."""
    assert workflow_method("albef").entry["kind"] == "none"
    start = baseline_start["start"]
    before = _weights(start)
    result = tmp_path / "albef-vg.json"
    run_amc(
        "evaluate",
        "--checkpoint",
        start,
        "--model-config",
        TINY_MODEL,
        "--vocab",
        baseline_start["vocab"],
        "--records",
        baseline_start["records"],
        "--benchmark",
        "vg",
        "--split",
        "train",
        "--image-res",
        "32",
        "--out",
        result,
        "--method",
        "albef",
        "--seed",
        "0",
    )
    summary = json.loads(result.read_text())["summary"]
    assert summary["method"] == "albef" and summary["n_cases"] > 0
    assert not _changed(before, _weights(start))
