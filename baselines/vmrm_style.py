"""VMRM-style baseline: phrase-patch pseudo-pairs from a frozen copy of the starting model.

VMRM (Dou & Peng, EMNLP 2021, "Improving Pre-trained Vision-and-Language Embeddings for
Phrase Grounding") has no public code. This module is an *approximation of its idea* on the
ALBEF backbone, labelled "VMRM-style" everywhere; docs/baselines.md explains what differs
from the paper. The idea: a pretrained model's own embeddings already hold rough
phrase-to-region correspondences; extract them as pseudo-labels and fine-tune on image-caption
data (no boxes) with objectives built from them.

Here, for every content token t of a caption (not [CLS], not padding) and every image patch p:

    cos[b, t, p] = <normalize(text_proj(h[b, t])), normalize(vision_proj(v[b, p]))>

with ``h`` the fused token states of the positive pair (or, with ``token_source: text``, the
text-only states) and ``v`` the patch tokens of the image encoder (image [CLS] dropped). The
*teacher* is a frozen copy of the starting model, made once in ``setup``; its ``cos`` gives
the pseudo-pairs. Two objectives, each switchable on its own:

* ``vmrm_contrastive``: token-patch contrastive cross-entropy of the student's softmax over
  patches, ``softmax_p(cos / temperature)``, toward the teacher's pseudo-pair patches
  (uniform over its top-k patches, or a sharpened softmax ``softmax_p(cos_T / target_temperature)``).
* ``vmrm_consistency``: KL(teacher map || student map) of softmax-normalised phrase-patch maps,
  aggregated over the caption's content tokens (one map per caption) or per token.

The teacher is kept outside the trained model: it is an attribute of the objectives (plain
Python objects, not ``nn.Module``s), so it is never in ``model.parameters()``, the optimiser,
DistributedDataParallel or a saved state_dict. One teacher is shared by both objectives.
"""

from __future__ import annotations

import copy
import logging
import weakref
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from amc.io import AmcError
from amc.objectives import Objective, ObjectiveOutput, StepContext, register_objective

log = logging.getLogger(__name__)

LABEL = "VMRM-style"
TOKEN_SOURCES = ("fused", "text")
TARGETS = ("topk", "soft")
AGGREGATES = ("caption", "token")

# Parts of ALBEF the teacher never uses (it runs encode_image, encode_text and fuse only):
# dropped from the copy so it costs one online model, not two plus the queues.
_UNUSED_BY_TEACHER = ("visual_encoder_m", "vision_proj_m", "text_encoder_m", "text_proj_m")
_UNUSED_BUFFERS = ("image_queue", "text_queue")


# --------------------------------------------------------------------------- the frozen teacher

# One teacher per student model, so the two objectives share it (memory, and one forward a step).
_TEACHERS: weakref.WeakKeyDictionary[nn.Module, nn.Module] = weakref.WeakKeyDictionary()


def frozen_teacher(model: nn.Module) -> nn.Module:
    """A frozen copy of ``model`` as it is now (the starting weights, when called from ``setup``).

    Eval mode (no dropout), ``requires_grad`` off, momentum encoders and queues dropped. The
    same copy is returned for the same student on later calls.
    """
    teacher = _TEACHERS.get(model)
    if teacher is None:
        teacher = copy.deepcopy(model)
        for name in _UNUSED_BY_TEACHER + _UNUSED_BUFFERS:
            if hasattr(teacher, name):
                setattr(teacher, name, None)
        teacher.eval()
        teacher.requires_grad_(False)
        _TEACHERS[model] = teacher
        n_params = sum(p.numel() for p in teacher.parameters())
        log.info(
            "%s: frozen teacher copy of the starting model made (%d parameters, never trained)",
            LABEL,
            n_params,
        )
    return teacher


# --------------------------------------------------------------------------- phrase-patch maps


def content_tokens(input_ids: Tensor, attention_mask: Tensor, special_ids: dict[str, int]) -> Tensor:
    """[B, L] bool: real tokens of the caption, without [CLS], padding (and [SEP]/[MASK] if present)."""
    content = attention_mask.bool().clone()
    content[:, 0] = False  # [CLS]
    for name in ("cls", "pad", "sep", "mask"):
        if name in special_ids:
            content &= input_ids != special_ids[name]
    return content


def token_patch_cosine(model: nn.Module, token_states: Tensor, image_embeds: Tensor) -> Tensor:
    """[B, L, H] token states and [B, 1+N, W] image tokens -> [B, L, N] cosine similarities.

    Both sides go through the contrastive projections (text_proj, vision_proj) and are
    L2-normalised, as ALBEF's image_feat/text_feat do for the [CLS] tokens.
    """
    tokens = F.normalize(model.text_proj(token_states), dim=-1)
    patches = F.normalize(model.vision_proj(image_embeds[:, 1:, :]), dim=-1)
    return tokens @ patches.transpose(1, 2)


@dataclass
class PhrasePatchMaps:
    """One step's maps, shared by both objectives (cached on the StepContext)."""

    student: Tensor  # [B, L, N] cosine, in the autograd graph
    teacher: Tensor  # [B, L, N] cosine, no gradient
    content: Tensor  # [B, L] bool


def _teacher_states(teacher: nn.Module, ctx: StepContext, token_source: str) -> tuple[Tensor, Tensor]:
    """The teacher's (token states, image tokens) for the step's positive pairs, without gradient."""
    batch = ctx.batch
    device = batch.image.device  # pragma: no mutate (device)
    # the trainer moved the student after setup
    if next(teacher.parameters()).device != device:  # pragma: no mutate block (device)
        teacher.to(device)
    with torch.no_grad():
        image_embeds = teacher.encode_image(batch.image)
        text_embeds = teacher.encode_text(batch.input_ids, batch.attention_mask)
        if token_source == "text":
            return text_embeds, image_embeds
        return teacher.fuse(text_embeds, batch.attention_mask, image_embeds).hidden_states, image_embeds


def phrase_patch_maps(ctx: StepContext, teacher: nn.Module, token_source: str) -> PhrasePatchMaps:
    """Student and teacher token-patch cosines for the positive pairs of this step (computed once)."""
    key = f"vmrm_maps_{token_source}"
    cached = ctx.shared.get(key)
    if cached is not None:
        return cached
    # The student reuses the step's shared passes (the positive fusion pass is also ITM's).
    student_states = ctx.positive_fusion.hidden_states if token_source == "fused" else ctx.text_embeds
    student = token_patch_cosine(ctx.model, student_states, ctx.image_embeds)
    with torch.no_grad():
        teacher_states, teacher_image = _teacher_states(teacher, ctx, token_source)
        teacher_cos = token_patch_cosine(teacher, teacher_states, teacher_image)
    content = content_tokens(ctx.batch.input_ids, ctx.batch.attention_mask, ctx.special_ids)
    maps = PhrasePatchMaps(student=student, teacher=teacher_cos.float(), content=content)
    ctx.shared[key] = maps
    return maps


# --------------------------------------------------------------------------- the two losses (pure)


def pseudo_targets(teacher_cos: Tensor, target: str, top_k: int, target_temperature: float) -> Tensor:
    """[..., N] teacher cosines -> [..., N] target distributions over patches (rows sum to 1).

    ``topk``: uniform over the teacher's k most similar patches (the pseudo-pair patches).
    ``soft``: ``softmax(cos / target_temperature)``; a small temperature sharpens it.
    """
    if target == "soft":
        return F.softmax(teacher_cos / target_temperature, dim=-1)
    k = min(top_k, teacher_cos.shape[-1])
    index = teacher_cos.topk(k, dim=-1).indices
    return torch.zeros_like(teacher_cos).scatter_(-1, index, 1.0 / k)


def contrastive_loss(student_cos: Tensor, targets: Tensor, content: Tensor, temperature: float) -> Tensor:
    """Mean over content tokens of CE(targets, softmax_p(student_cos / temperature))."""
    log_probs = F.log_softmax(student_cos.float() / temperature, dim=-1)
    per_token = -(targets * log_probs).sum(-1)  # [B, L]
    return per_token[content].mean()


def caption_map(cos: Tensor, content: Tensor) -> Tensor:
    """[B, L, N] token-patch cosines -> [B, N] mean over each caption's content tokens."""
    weights = content.to(cos.dtype).unsqueeze(-1)
    return (cos * weights).sum(1) / weights.sum(1).clamp(min=1.0)


def consistency_loss(
    student_cos: Tensor,
    teacher_cos: Tensor,
    content: Tensor,
    temperature: float,
    target_temperature: float,
    aggregate: str,
) -> Tensor:
    """KL(teacher map || student map) of softmax-normalised maps over patches, averaged over
    captions that have a content token (``caption``) or over content tokens (``token``)."""
    student_cos, teacher_cos = student_cos.float(), teacher_cos.float()
    if aggregate == "caption":
        student_cos, teacher_cos = caption_map(student_cos, content), caption_map(teacher_cos, content)
        selected = content.any(dim=1)  # [B]
    else:
        selected = content  # [B, L]
    log_student = F.log_softmax(student_cos / temperature, dim=-1)
    teacher = F.softmax(teacher_cos / target_temperature, dim=-1)
    kl = F.kl_div(log_student, teacher, reduction="none").sum(-1)  # teacher * (log teacher - log student)
    return kl[selected].mean()


# --------------------------------------------------------------------------- the objectives


def _zero(ctx: StepContext) -> Tensor:
    """A zero loss on the step's device (no term to add)."""
    return torch.zeros((), device=ctx.batch.image.device)  # pragma: no mutate (device)


def _check_choice(objective: str, name: str, value: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise AmcError(f"objective {objective!r}: {name} must be one of {choices}, not {value!r}")
    return value


def _check_positive(objective: str, name: str, value: float) -> float:
    if not value > 0:
        raise AmcError(f"objective {objective!r}: {name} must be positive, got {value!r}")
    return float(value)


class _VmrmObjective(Objective):
    """Shared plumbing: the teacher (made in ``setup``), the maps, weight 0 = off (no teacher, no work)."""

    def __init__(self, weight: float, token_source: str, temperature: float):
        super().__init__(weight)
        self.token_source = _check_choice(self.name, "token_source", token_source, TOKEN_SOURCES)
        self.temperature = _check_positive(self.name, "temperature", temperature)
        self.teacher: nn.Module | None = None  # a plain attribute: objectives are not nn.Modules

    @property
    def active(self) -> bool:
        return self.weight != 0.0

    def setup(self, model: nn.Module) -> None:
        if self.active:
            self.teacher = frozen_teacher(model)

    def maps(self, ctx: StepContext) -> PhrasePatchMaps:
        if self.teacher is None:
            raise AmcError(f"objective {self.name!r} ({LABEL}): setup(model) was not called before training")
        return phrase_patch_maps(ctx, self.teacher, self.token_source)


@register_objective("vmrm_contrastive")
class VmrmContrastive(_VmrmObjective):
    """VMRM-style token-patch contrastive term toward the frozen teacher's pseudo-pair patches."""

    def __init__(
        self,
        weight: float = 1.0,
        temperature: float = 0.07,
        target: str = "topk",
        top_k: int = 1,
        target_temperature: float = 0.03,
        token_source: str = "fused",
    ):
        super().__init__(weight, token_source, temperature)
        self.target = _check_choice(self.name, "target", target, TARGETS)
        if not (isinstance(top_k, int) and top_k >= 1):
            raise AmcError(f"objective {self.name!r}: top_k must be an integer >= 1, got {top_k!r}")
        self.top_k = top_k
        self.target_temperature = _check_positive(self.name, "target_temperature", target_temperature)

    def __call__(self, ctx: StepContext) -> ObjectiveOutput:
        if not self.active:
            return ObjectiveOutput(_zero(ctx))
        maps = self.maps(ctx)
        if not bool(maps.content.any()):  # only empty captions in this batch
            return ObjectiveOutput(maps.student.sum() * 0.0, {"loss_vmrm_contrastive": 0.0})
        targets = pseudo_targets(maps.teacher, self.target, self.top_k, self.target_temperature)
        loss = contrastive_loss(maps.student, targets, maps.content, self.temperature)
        with torch.no_grad():  # how often the student's best patch is the teacher's (a diagnostic)
            agree = maps.student.argmax(-1) == maps.teacher.argmax(-1)
            agreement = agree[maps.content].float().mean().item()
        logs = {"loss_vmrm_contrastive": loss.item(), "vmrm_top1_agreement": agreement}
        return ObjectiveOutput(self.weight * loss, logs)


@register_objective("vmrm_consistency")
class VmrmConsistency(_VmrmObjective):
    """VMRM-style consistency: KL(teacher's pseudo-pair map || the model's phrase-patch map)."""

    def __init__(
        self,
        weight: float = 1.0,
        temperature: float = 0.07,
        target_temperature: float | None = None,
        aggregate: str = "caption",
        token_source: str = "fused",
    ):
        super().__init__(weight, token_source, temperature)
        self.aggregate = _check_choice(self.name, "aggregate", aggregate, AGGREGATES)
        # Same temperature on both sides by default: zero loss and zero gradient at the start.
        self.target_temperature = (
            self.temperature
            if target_temperature is None
            else _check_positive(self.name, "target_temperature", target_temperature)
        )

    def __call__(self, ctx: StepContext) -> ObjectiveOutput:
        if not self.active:
            return ObjectiveOutput(_zero(ctx))
        maps = self.maps(ctx)
        if not bool(maps.content.any()):
            return ObjectiveOutput(maps.student.sum() * 0.0, {"loss_vmrm_consistency": 0.0})
        loss = consistency_loss(
            maps.student,
            maps.teacher,
            maps.content,
            self.temperature,
            self.target_temperature,
            self.aggregate,
        )
        return ObjectiveOutput(self.weight * loss, {"loss_vmrm_consistency": loss.item()})
