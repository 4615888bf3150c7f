"""ALBEF's objectives, as the released ``model_pretrain.py`` computes them: ``itc``, ``itm``, ``mlm``."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from amc.io import AmcError
from amc.objectives.context import StepContext
from amc.objectives.registry import Objective, ObjectiveOutput, register_objective


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
            targets = torch.arange(ctx.batch.size, device=sim_i2t.device)  # pragma: no mutate (device)
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
        device = batch.image.device  # pragma: no mutate (device)
        neg_image, neg_text = neg_image.to(device), neg_text.to(device)  # pragma: no mutate (device)
        text_all = torch.cat([ctx.text_embeds, ctx.text_embeds[neg_text]], dim=0)
        mask_all = torch.cat([batch.attention_mask, batch.attention_mask[neg_text]], dim=0)
        image_all = torch.cat([ctx.image_embeds[neg_image], ctx.image_embeds], dim=0)
        negatives = model.fuse(text_all, mask_all, image_all)
        logits = torch.cat(
            [ctx.itm_positive_logits, model.itm_logits(negatives.hidden_states[:, 0, :])], dim=0
        )
        labels = torch.cat([torch.ones(bs), torch.zeros(2 * bs)]).long()
        labels = labels.to(logits.device)  # pragma: no mutate (device)
        loss = F.cross_entropy(logits, labels)
        return ObjectiveOutput(self.weight * loss, {"loss_itm": loss.item()})


def mask_tokens(input_ids, tokenizer_ids: dict[str, int], vocab_size: int, probability: float, generator):
    """BERT masking as in ALBEF's ``mask``: never [PAD] or [CLS]; of the chosen tokens 80% become
    [MASK], 10% a random token, 10% stay. Returns (masked ids, labels with -100 where not chosen)."""
    device = input_ids.device  # pragma: no mutate (device)
    ids = input_ids.clone().cpu()
    labels = ids.clone()
    chosen = torch.bernoulli(torch.full(ids.shape, probability), generator=generator).bool()
    chosen &= (ids != tokenizer_ids["pad"]) & (ids != tokenizer_ids["cls"])
    labels[~chosen] = -100
    replace = torch.bernoulli(torch.full(ids.shape, 0.8), generator=generator).bool() & chosen
    ids[replace] = tokenizer_ids["mask"]
    random_token = torch.bernoulli(torch.full(ids.shape, 0.5), generator=generator).bool() & chosen & ~replace
    ids[random_token] = torch.randint(vocab_size, ids.shape, generator=generator)[random_token]
    return ids.to(device), labels.to(device)  # pragma: no mutate (device)


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
