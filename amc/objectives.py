"""Training objectives as plug-ins.

A method is a name plus a set of objectives with their hyperparameters (see the
run configuration in docs/architecture.md). Each objective is a class
registered under a name with :func:`register_objective`; it receives a
:class:`StepContext` that computes the pieces objectives share (encoder
outputs, contrastive similarities, the positive-pair fusion pass) once, lazily,
and returns an :class:`ObjectiveOutput`. The ALBEF objectives (``itc``, ``itm``,
``mlm``) follow the released ``model_pretrain.py``; ``amc`` adds the AMC loss on
the GradCAM of the positive pair. Baselines register theirs the same way
(``baselines/``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import torch
import torch.nn.functional as F

from amc.gradcam import gradcam_train
from amc.io import AmcError
from amc.losses import amc_loss

log = logging.getLogger(__name__)


@dataclass
class TrainBatch:
    """One (micro-)batch on the training device."""

    image: torch.Tensor  # [B, 3, R, R]
    input_ids: torch.Tensor  # [B, L]
    attention_mask: torch.Tensor  # [B, L]
    box_mask: torch.Tensor | None = None  # [B, S, S] in [0, 1]
    has_box: torch.Tensor | None = None  # [B] bool: which samples carry a box mask
    texts: list[str] = field(default_factory=list)

    @property
    def size(self) -> int:
        return self.image.shape[0]


@dataclass
class ObjectiveOutput:
    """``loss`` is the weighted contribution to the total; ``logs`` holds detached terms to record."""

    loss: torch.Tensor
    logs: dict[str, float] = field(default_factory=dict)


@dataclass
class Momentum:
    image_embeds: torch.Tensor
    image_feat: torch.Tensor
    text_feat: torch.Tensor


@dataclass
class Contrastive:
    sim_i2t: torch.Tensor  # [B, B + Q] online image vs (momentum text of the batch, text queue)
    sim_t2i: torch.Tensor
    targets_i2t: torch.Tensor  # distilled targets, alpha-mixed with the one-hot diagonal
    targets_t2i: torch.Tensor


class StepContext:
    """Shared, lazily computed pieces of one training step (what ``model_pretrain.forward`` computes)."""

    def __init__(
        self,
        model,
        batch: TrainBatch,
        alpha: float,
        generator: torch.Generator,
        needs_gradcam: bool,
        special_ids: dict[str, int],
    ):
        self.model = model
        self.special_ids = special_ids  # pad, cls, mask token ids of the tokenizer in use
        self.batch = batch
        self.alpha = alpha
        self.generator = generator  # hard-negative sampling and MLM masking, reproducible per step
        self.needs_gradcam = needs_gradcam

    @cached_property
    def image_embeds(self) -> torch.Tensor:
        return self.model.encode_image(self.batch.image)

    @cached_property
    def text_embeds(self) -> torch.Tensor:
        return self.model.encode_text(self.batch.input_ids, self.batch.attention_mask)

    @cached_property
    def image_feat(self) -> torch.Tensor:
        return self.model.image_feat(self.image_embeds)

    @cached_property
    def text_feat(self) -> torch.Tensor:
        return self.model.text_feat(self.text_embeds)

    @cached_property
    def momentum(self) -> Momentum:
        with torch.no_grad():
            image_embeds_m = self.model.encode_image_m(self.batch.image)
            text_embeds_m = self.model.encode_text(
                self.batch.input_ids, self.batch.attention_mask, momentum=True
            )
            return Momentum(
                image_embeds=image_embeds_m,
                image_feat=self.model.image_feat(image_embeds_m, momentum=True),
                text_feat=self.model.text_feat(text_embeds_m, momentum=True),
            )

    @property
    def momentum_used(self) -> bool:
        """Whether an objective ran the momentum encoders (the trainer then enqueues their features)."""
        return "momentum" in self.__dict__  # where cached_property keeps a computed value

    def clamp_temperature(self) -> None:
        """As released: the learnable temperature is clamped to [0.001, 0.5] before it is used."""
        with torch.no_grad():
            self.model.temp.clamp_(0.001, 0.5)

    @cached_property
    def contrastive(self) -> Contrastive:
        model, m = self.model, self.momentum
        self.clamp_temperature()
        with torch.no_grad():
            image_feat_all = torch.cat([m.image_feat.t(), model.image_queue.clone().detach()], dim=1)
            text_feat_all = torch.cat([m.text_feat.t(), model.text_queue.clone().detach()], dim=1)
            sim_i2t_m = m.image_feat @ text_feat_all / model.temp
            sim_t2i_m = m.text_feat @ image_feat_all / model.temp
            diagonal = torch.zeros_like(sim_i2t_m)
            diagonal.fill_diagonal_(1)
            targets_i2t = self.alpha * F.softmax(sim_i2t_m, dim=1) + (1 - self.alpha) * diagonal
            targets_t2i = self.alpha * F.softmax(sim_t2i_m, dim=1) + (1 - self.alpha) * diagonal
        sim_i2t = self.image_feat @ text_feat_all / model.temp
        sim_t2i = self.text_feat @ image_feat_all / model.temp
        return Contrastive(sim_i2t, sim_t2i, targets_i2t, targets_t2i)

    @cached_property
    def positive_fusion(self):
        """Fusion pass of the matching pairs; captures the GradCAM layer's cross-attention when needed."""
        return self.model.fuse(
            self.text_embeds,
            self.batch.attention_mask,
            self.image_embeds,
            capture_cross_attention=self.needs_gradcam,
        )

    @cached_property
    def itm_positive_logits(self) -> torch.Tensor:
        return self.model.itm_logits(self.positive_fusion.hidden_states[:, 0, :])


OBJECTIVES: dict[str, type[Objective]] = {}


def register_objective(name: str):
    """Class decorator: make an objective selectable by ``name`` in a run configuration."""

    def decorate(cls):
        if name in OBJECTIVES and OBJECTIVES[name] is not cls:
            raise ValueError(f"objective {name!r} registered twice")
        cls.name = name
        OBJECTIVES[name] = cls
        return cls

    return decorate


class Objective:
    """Base class. Subclasses take their hyperparameters as keyword arguments."""

    name: str = ""
    needs_gradcam: bool = False
    needs_boxes: bool = False

    def __init__(self, weight: float = 1.0):
        self.weight = float(weight)

    def setup(self, model) -> None:
        """Called once by the trainer after the starting weights are loaded (e.g. to freeze a teacher copy)."""

    def __call__(self, ctx: StepContext) -> ObjectiveOutput:
        raise NotImplementedError


def build_objectives(spec: dict[str, dict[str, Any] | None]) -> list[Objective]:
    """Instantiate the objectives of a method from ``{name: hyperparameters}``.

    An objective is off when its entry is ``null``, ``{enabled: false}`` or has ``weight: 0``.
    Unknown names and unknown hyperparameters are errors that name them.
    """
    import baselines  # noqa: F401  (registers the baselines' objectives)

    objectives = []
    for name, params in spec.items():
        if params is None:
            continue
        params = dict(params)
        if params.pop("enabled", True) is False or float(params.get("weight", 1.0)) == 0.0:
            continue
        if name not in OBJECTIVES:
            raise AmcError(f"unknown objective {name!r}; registered: {', '.join(sorted(OBJECTIVES))}")
        try:
            objectives.append(OBJECTIVES[name](**params))
        except TypeError as error:
            raise AmcError(f"objective {name!r}: {error}") from None
    if not objectives:
        raise AmcError("the method has no objective enabled")
    return objectives


@register_objective("itc")
class ImageTextContrastive(Objective):
    """Image-text contrastive loss.

    ``mode="albef"`` (as released): online features against the momentum features of the batch
    and the feature queues, with momentum-distilled targets. ``mode="in_batch"``: CLIP-style,
    online image against online text features of the batch only (no momentum pass, no queue, no
    distillation). The demo's from-scratch pretraining uses it: against a lagging momentum encoder
    and a queue of stale features, a randomly initialised tiny model does not leave chance level
    within its budget (docs/workflow.md).
    """

    MODES = ("albef", "in_batch")

    def __init__(self, weight: float = 1.0, mode: str = "albef"):
        super().__init__(weight)
        if mode not in self.MODES:
            raise AmcError(f"itc: mode must be one of {self.MODES}, got {mode!r}")
        self.mode = mode

    def __call__(self, ctx: StepContext) -> ObjectiveOutput:
        if self.mode == "in_batch":
            ctx.clamp_temperature()
            sim_i2t = ctx.image_feat @ ctx.text_feat.t() / ctx.model.temp
            targets = torch.arange(ctx.batch.size, device=sim_i2t.device)
            loss = (F.cross_entropy(sim_i2t, targets) + F.cross_entropy(sim_i2t.t(), targets)) / 2
            return ObjectiveOutput(self.weight * loss, {"loss_itc": loss.item()})
        c = ctx.contrastive
        loss_i2t = -torch.sum(F.log_softmax(c.sim_i2t, dim=1) * c.targets_i2t, dim=1).mean()
        loss_t2i = -torch.sum(F.log_softmax(c.sim_t2i, dim=1) * c.targets_t2i, dim=1).mean()
        loss = (loss_i2t + loss_t2i) / 2
        return ObjectiveOutput(self.weight * loss, {"loss_itc": loss.item()})


@register_objective("itm")
class ImageTextMatching(Objective):
    """Matching with one negative image per text and one negative text per image.

    ``negatives="hard"`` (as released): drawn from the in-batch similarity (softmax weights, the
    positive excluded). ``negatives="random"``: drawn uniformly from the other pairs of the batch;
    the demo's from-scratch pretraining uses it, because hard negatives from a contrastive space
    that has not formed yet leave the matching head at its prior (docs/workflow.md).
    """

    NEGATIVES = ("hard", "random")

    def __init__(self, weight: float = 1.0, negatives: str = "hard"):
        super().__init__(weight)
        if negatives not in self.NEGATIVES:
            raise AmcError(f"itm: negatives must be one of {self.NEGATIVES}, got {negatives!r}")
        self.negatives = negatives

    def _negative_weights(self, ctx: StepContext) -> tuple[torch.Tensor, torch.Tensor]:
        bs = ctx.batch.size
        if self.negatives == "random":
            weights_i2t = torch.ones(bs, bs)
            weights_t2i = torch.ones(bs, bs)
        else:
            # As released: the in-batch block of the contrastive similarities, i.e. online features
            # against the MOMENTUM features of the batch (the first bs columns, before the queue).
            sim = ctx.contrastive
            weights_i2t = F.softmax(sim.sim_i2t[:, :bs].float(), dim=1) + 1e-9  # + eps: no all-zero row
            weights_t2i = F.softmax(sim.sim_t2i[:, :bs].float(), dim=1) + 1e-9
        weights_i2t.fill_diagonal_(0)
        weights_t2i.fill_diagonal_(0)
        return weights_i2t, weights_t2i

    def __call__(self, ctx: StepContext) -> ObjectiveOutput:
        model, batch, bs = ctx.model, ctx.batch, ctx.batch.size
        if bs < 2:
            raise AmcError("the matching objective needs at least 2 pairs per batch (negatives)")
        with torch.no_grad():
            weights_i2t, weights_t2i = self._negative_weights(ctx)
            # Drawn on the host: the step's generator is a CPU generator (exact resume), and
            # CUDA kernels refuse it.
            neg_image = torch.multinomial(weights_t2i.cpu(), 1, generator=ctx.generator).squeeze(1)
            neg_text = torch.multinomial(weights_i2t.cpu(), 1, generator=ctx.generator).squeeze(1)
        neg_image, neg_text = neg_image.to(batch.image.device), neg_text.to(batch.image.device)
        text_all = torch.cat([ctx.text_embeds, ctx.text_embeds[neg_text]], dim=0)
        mask_all = torch.cat([batch.attention_mask, batch.attention_mask[neg_text]], dim=0)
        image_all = torch.cat([ctx.image_embeds[neg_image], ctx.image_embeds], dim=0)
        negatives = model.fuse(text_all, mask_all, image_all)
        logits = torch.cat(
            [ctx.itm_positive_logits, model.itm_logits(negatives.hidden_states[:, 0, :])], dim=0
        )
        labels = torch.cat([torch.ones(bs), torch.zeros(2 * bs)]).long().to(logits.device)
        loss = F.cross_entropy(logits, labels)
        return ObjectiveOutput(self.weight * loss, {"loss_itm": loss.item()})


def mask_tokens(input_ids, tokenizer_ids: dict[str, int], vocab_size: int, probability: float, generator):
    """BERT masking as in ALBEF's ``mask``: never [PAD] or [CLS]; of the chosen tokens 80% become
    [MASK], 10% a random token, 10% stay. Returns (masked ids, labels with -100 where not chosen)."""
    device = input_ids.device
    ids = input_ids.clone().cpu()
    labels = ids.clone()
    chosen = torch.bernoulli(torch.full(ids.shape, probability), generator=generator).bool()
    chosen &= (ids != tokenizer_ids["pad"]) & (ids != tokenizer_ids["cls"])
    labels[~chosen] = -100
    replace = torch.bernoulli(torch.full(ids.shape, 0.8), generator=generator).bool() & chosen
    ids[replace] = tokenizer_ids["mask"]
    random_token = torch.bernoulli(torch.full(ids.shape, 0.5), generator=generator).bool() & chosen & ~replace
    ids[random_token] = torch.randint(vocab_size, ids.shape, generator=generator)[random_token]
    return ids.to(device), labels.to(device)


@register_objective("mlm")
class MaskedLanguageModelling(Objective):
    """Masked LM conditioned on the image, distilled from the momentum model with weight alpha."""

    def __init__(self, weight: float = 1.0, probability: float = 0.15):
        super().__init__(weight)
        self.probability = float(probability)

    def __call__(self, ctx: StepContext) -> ObjectiveOutput:
        model, batch = ctx.model, ctx.batch
        ids, labels = mask_tokens(
            batch.input_ids, ctx.special_ids, model.config.text.vocab_size, self.probability, ctx.generator
        )
        if not (labels != -100).any():  # nothing masked in this (tiny) batch
            zero = ctx.image_embeds.sum() * 0.0
            return ObjectiveOutput(zero, {"loss_mlm": 0.0})
        text = model.encode_text(ids, batch.attention_mask)
        fused = model.fuse(text, batch.attention_mask, ctx.image_embeds)
        logits = model.mlm_logits(fused.hidden_states)
        selected = labels != -100
        loss_ce = F.cross_entropy(logits[selected], labels[selected])
        if ctx.alpha == 0:  # no distillation (alpha 0, or step 0 of the ramp): skip the momentum pass
            return ObjectiveOutput(self.weight * loss_ce, {"loss_mlm": loss_ce.item()})
        with torch.no_grad():
            text_m = model.encode_text(ids, batch.attention_mask, momentum=True)
            fused_m = model.fuse(text_m, batch.attention_mask, ctx.momentum.image_embeds, momentum=True)
            soft_labels = F.softmax(model.mlm_logits(fused_m.hidden_states, momentum=True), dim=-1)
        loss_distill = -(F.log_softmax(logits[selected], dim=-1) * soft_labels[selected]).sum(-1).mean()
        loss = (1 - ctx.alpha) * loss_ce + ctx.alpha * loss_distill
        return ObjectiveOutput(self.weight * loss, {"loss_mlm": loss.item()})


@register_objective("amc")
class AttentionMapConsistency(Objective):
    """The AMC loss on the training-recipe GradCAM of the positive pairs that carry a box."""

    needs_gradcam = True
    needs_boxes = True

    def __init__(
        self,
        weight: float = 1.0,
        delta_mean: float = 0.1,
        delta_max: float = 0.5,
        weight_mean: float = 0.2,
        weight_max: float = 0.8,
        per_sample_mean: bool = False,
    ):
        super().__init__(weight)
        self.params = dict(
            delta_mean=delta_mean,
            delta_max=delta_max,
            weight_mean=weight_mean,
            weight_max=weight_max,
            per_sample_mean=per_sample_mean,
        )

    def __call__(self, ctx: StepContext) -> ObjectiveOutput:
        batch = ctx.batch
        if batch.box_mask is None:
            raise AmcError("the amc objective needs box masks: train on records (data.kind: records)")
        has_box = batch.has_box if batch.has_box is not None else torch.ones(batch.size, dtype=torch.bool)
        if not bool(has_box.any()):
            zero = ctx.itm_positive_logits.sum() * 0.0
            return ObjectiveOutput(zero, {"loss_amc": 0.0, "l_mean": 0.0, "l_max": 0.0})
        fusion = ctx.positive_fusion
        heatmap = gradcam_train(
            fusion.cross_attention,
            ctx.itm_positive_logits[:, 1],
            batch.attention_mask,
            ctx.model.image_grid,
            batch.box_mask.shape[-1],
        )
        has_box = has_box.to(heatmap.device)
        terms = amc_loss(heatmap[has_box].float(), batch.box_mask[has_box].float(), **self.params)
        logs = {"loss_amc": terms.total.item(), "l_mean": terms.l_mean.item(), "l_max": terms.l_max.item()}
        return ObjectiveOutput(self.weight * terms.total, logs)
