"""What an objective receives: the training batch and the step's shared, lazily computed pieces.

:class:`StepContext` computes what several objectives need (encoder outputs, contrastive
similarities, the positive-pair fusion pass) once per (micro-)batch, on first use, as the
released ``model_pretrain.forward`` computes them once for all its losses.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

import torch
import torch.nn.functional as F


@dataclass
class TrainBatch:
    """One (micro-)batch on the training device."""

    image: torch.Tensor  # [B, 3, R, R]
    input_ids: torch.Tensor  # [B, L]
    attention_mask: torch.Tensor  # [B, L]
    # [B, S, S] in [0, 1]: every sample's box mask (records data); None for captions (pretraining)
    box_mask: torch.Tensor | None = None

    @property
    def size(self) -> int:
        return self.image.shape[0]


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
        self._momentum: Momentum | None = None  # computed by the first objective that asks
        # Per-step values that objectives outside amc share (e.g. a baseline's maps), by key.
        self.shared: dict[str, Any] = {}

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

    @property
    def momentum(self) -> Momentum:
        """The momentum encoders' outputs, computed once, on first use (no gradient)."""
        if self._momentum is None:
            with torch.no_grad():
                image_embeds_m = self.model.encode_image_m(self.batch.image)
                text_embeds_m = self.model.encode_text(
                    self.batch.input_ids, self.batch.attention_mask, momentum=True
                )
                self._momentum = Momentum(
                    image_embeds=image_embeds_m,
                    image_feat=self.model.image_feat(image_embeds_m, momentum=True),
                    text_feat=self.model.text_feat(text_embeds_m, momentum=True),
                )
        return self._momentum

    @property
    def momentum_used(self) -> bool:
        """Whether an objective ran the momentum encoders (the trainer then enqueues their features)."""
        return self._momentum is not None

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
