"""Explainers beside the paper's GradCAM, for ``amc evaluate --explainer``.

AMC trains one explanation, GradCAM of the ``gradcam_layer`` cross-attention (layer 8 of
ALBEF-base), and the paper scores that same map. Whether the model grounds better, or only
that map moved, shows when other maps of the same model go through the same pointing protocol.
Every explainer gives one ``[h, w]`` map per phrase at patch-grid resolution:

``gradcam[:layer=K]``
    GradCAM (:func:`amc.gradcam.gradcam_map`, the evaluation recipe) at fusion layer ``K``;
    default: the model config's ``gradcam_layer``, i.e. exactly the default evaluation's map.
``attention[:layer=K]``
    The raw cross-attention probabilities of fusion layer ``K`` (default ``gradcam_layer``), with
    GradCAM's reduction and no gradient: image class-token column dropped, padding rows zeroed,
    mean over heads, then mean over ALL text positions ([CLS] included, padding counted as
    zeros), :func:`amc.gradcam.mean_over_heads_and_text`.
``gradcam-mean``
    The mean over every fusion layer of that layer's GradCAM map (one backward pass gives all).
``rollout``
    Attention rollout (Abnar & Zuidema 2020) through the fusion layers, propagated into the image
    tokens the way Chefer et al. 2021 propagate bi-modal relevancy, without gradients;
    :func:`rollout_map` defines it.

:func:`explain` computes any set of them from ONE fusion pass, with one backward pass for all
the gradient explainers together; with none of those it runs entirely under ``torch.no_grad``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING

from amc.io import AmcError

if TYPE_CHECKING:
    from torch import Tensor

# The names and their parsing load without torch (the workflow builds its jobs from them);
# the map functions import torch and amc.gradcam when called.

GRADCAM, ATTENTION, GRADCAM_MEAN, ROLLOUT = "gradcam", "attention", "gradcam-mean", "rollout"
NAMES = (GRADCAM, ATTENTION, GRADCAM_MEAN, ROLLOUT)
LAYERED = (GRADCAM, ATTENTION)  # the ones that take ``:layer=K``


@dataclasses.dataclass(frozen=True)
class Explainer:
    """One explainer and its options; ``layer`` is None until :meth:`resolve` fills the default."""

    name: str
    layer: int | None = None

    @classmethod
    def parse(cls, text: str) -> Explainer:
        """``NAME[:layer=K]`` (the form of ``--explainer`` and of the workflow config)."""
        name, _, options = text.strip().partition(":")
        if name not in NAMES:
            raise AmcError(f"explainer {text!r}: unknown name {name!r} (one of {', '.join(NAMES)})")
        layer = None
        for option in filter(None, options.split(",")):
            key, sep, value = option.partition("=")
            if name not in LAYERED:
                raise AmcError(f"explainer {text!r}: {name} takes no options")
            if key.strip() != "layer" or not sep:
                raise AmcError(f"explainer {text!r}: unknown option {option!r} (the option is layer=K)")
            try:
                layer = int(value)
            except ValueError:
                raise AmcError(f"explainer {text!r}: layer must be an integer, not {value!r}") from None
        return cls(name, layer)

    def resolve(self, config) -> Explainer:
        """The explainer on a model (:class:`amc.models.config.ModelConfig`): default layer filled,
        a layer without cross-attention refused."""
        if self.name not in LAYERED:
            return self
        layer = config.gradcam_layer if self.layer is None else self.layer
        fusion = config.fusion_layers
        if layer not in fusion:
            raise AmcError(
                f"explainer {self}: layer {layer} is not a fusion layer of this model; only layers "
                f"{fusion.start}..{fusion.stop - 1} have cross-attention (text.fusion_layer "
                f"{fusion.start}, {fusion.stop} layers in all)"
            )
        return dataclasses.replace(self, layer=layer)

    def to_dict(self) -> dict:
        """What the result JSON records (``summary.explainer``)."""
        return {"name": self.name, "layer": self.layer} if self.name in LAYERED else {"name": self.name}

    @property
    def slug(self) -> str:
        """The explainer in file names: ``gradcam-layer8``, ``attention-layer8``, ``gradcam-mean``, ``rollout``."""
        if self.name in LAYERED:
            if self.layer is None:
                raise ValueError(f"{self.name}: resolve the layer before naming a file after it")
            return f"{self.name}-layer{self.layer}"
        return self.name

    def __str__(self) -> str:
        return self.name if self.layer is None else f"{self.name}:layer={self.layer}"


def parse_explainers(texts: Sequence[str], config) -> list[Explainer]:
    """Parsed and resolved on ``config``, in order, duplicates (after resolving) dropped."""
    return list(dict.fromkeys(Explainer.parse(text).resolve(config) for text in texts))


def attention_map(
    cross_attention: Tensor, attention_mask: Tensor, grid: tuple[int, int] | None = None
) -> Tensor:
    """[B, heads, L, 1+N] cross-attention probabilities -> [B, h, w]: GradCAM's reduction of P alone."""
    from amc.gradcam import mean_over_heads_and_text, patch_grid

    grid = patch_grid(cross_attention, grid)
    return mean_over_heads_and_text(cross_attention[..., 1:], attention_mask, grid)


def rollout_map(
    self_attentions: Sequence[Tensor],
    cross_attentions: Sequence[Tensor],
    grid: tuple[int, int] | None = None,
) -> Tensor:
    """Attention rollout through the fusion layers, read at [CLS]: [B, h, w].

    ``self_attentions[i]`` [B, heads, L, L] and ``cross_attentions[i]`` [B, heads, L, 1+N] are the
    probabilities of the i-th fusion layer, in order. ``R`` [B, L, 1+N] says how much of each text
    position's state comes from each image token; it starts at 0 (before the first fusion layer
    no text state holds anything of the image; the text-only layers therefore do not matter).
    Each fusion layer, as Abnar & Zuidema weigh a residual connection (half the token itself):

    * self-attention: ``R <- (I + S) / 2 @ R`` with ``S`` its mean over heads;
    * cross-attention: ``R <- R / 2 + C / 2`` with ``C`` its mean over heads (the text position
      keeps half its state and takes half from the image tokens, weighted by its attention).

    The map is the [CLS] row of ``R`` (what the ITM head reads) without the image class-token
    column. Feed-forward sub-layers and layer norms are ignored, as in rollout. Padding
    positions get no weight from [CLS] (their keys carry the -10000 mask), so a phrase's map does
    not depend on the padding of its batch.
    """
    from amc.gradcam import patch_grid

    if len(self_attentions) != len(cross_attentions) or not cross_attentions:
        raise ValueError("rollout_map needs one self-attention and one cross-attention per fusion layer")
    grid = patch_grid(cross_attentions[0], grid)
    first = cross_attentions[0]
    relevance = first.new_zeros(first.shape[0], first.shape[2], first.shape[3])
    for self_probs, cross_probs in zip(self_attentions, cross_attentions, strict=True):
        relevance = 0.5 * (relevance + self_probs.mean(dim=1) @ relevance)
        relevance = 0.5 * relevance + 0.5 * cross_probs.mean(dim=1)
    return relevance[:, 0, 1:].reshape(-1, *grid)


def explain(
    model,
    image_embeds: Tensor,
    input_ids: Tensor,
    attention_mask: Tensor,
    explainers: Sequence[Explainer],
    image_index: Tensor | None = None,
) -> dict[Explainer, Tensor]:
    """Each (resolved) explainer's [B, h, w] maps, detached, from one fusion pass.

    As :func:`amc.gradcam.gradcam_eval`: the caller puts the model in eval mode and encodes the
    images (``image_index`` [B] picks each phrase's row); the image embeddings are detached. The
    fusion pass captures the layers the explainers need; the gradient explainers share ONE
    backward pass (``autograd.grad`` of the summed class-1 ITM logit w.r.t. every captured layer
    they need; no parameter's ``.grad`` is touched). Without a gradient explainer everything runs
    under ``torch.no_grad``. ``gradcam`` alone at ``gradcam_layer`` is the default evaluation's map
    exactly (the same pass); with more layers captured, layers that ``"fast"`` attention would run
    through SDPA run with an explicit softmax, which agrees to float precision.
    """
    import torch

    from amc.gradcam import gradcam_map

    fusion = list(model.fusion_layers)
    for explainer in explainers:
        if explainer.name in LAYERED and explainer.layer not in fusion:
            raise AmcError(f"explainer {explainer}: resolve it on the model first (Explainer.resolve)")
    gradient_layers = sorted(
        {e.layer for e in explainers if e.name == GRADCAM}
        | (set(fusion) if any(e.name == GRADCAM_MEAN for e in explainers) else set())
    )
    rollout = any(e.name == ROLLOUT for e in explainers)
    capture = set(gradient_layers) | {e.layer for e in explainers if e.name == ATTENTION}
    if rollout:
        capture |= set(fusion)
    if gradient_layers and torch.is_inference_mode_enabled():
        raise RuntimeError(
            "gradient explainers need autograd: call explain under no_grad, not inference_mode"
        )
    image_embeds = image_embeds.detach()
    if gradient_layers and image_embeds.is_inference():
        image_embeds = image_embeds.clone()
    with torch.no_grad():  # the text-only layers are not on the path from P to s
        text_embeds = model.encode_text(input_ids, attention_mask)
    with torch.set_grad_enabled(bool(gradient_layers)):
        fused = model.fuse(
            text_embeds,
            attention_mask,
            image_embeds,
            image_index=image_index,
            capture_layers=sorted(capture),
            capture_self_attention=rollout,
        )
        grads: dict[int, Tensor] = {}
        if gradient_layers:
            score = model.itm_logits(fused.hidden_states[:, 0, :])[:, 1].sum()
            probs = [fused.cross_attentions[layer] for layer in gradient_layers]
            grads = dict(zip(gradient_layers, torch.autograd.grad(score, probs), strict=True))
    cross = {layer: probs.detach() for layer, probs in fused.cross_attentions.items()}
    cams = {layer: gradcam_map(cross[layer], grads[layer], attention_mask) for layer in gradient_layers}
    maps: dict[Explainer, Tensor] = {}
    for explainer in explainers:
        if explainer.name == GRADCAM:
            maps[explainer] = cams[explainer.layer]
        elif explainer.name == GRADCAM_MEAN:
            maps[explainer] = torch.stack([cams[layer] for layer in fusion]).mean(dim=0)
        elif explainer.name == ATTENTION:
            maps[explainer] = attention_map(cross[explainer.layer], attention_mask)
        else:
            self_attentions = [fused.self_attentions[layer].detach() for layer in fusion]
            maps[explainer] = rollout_map(self_attentions, [cross[layer] for layer in fusion])
    return maps
