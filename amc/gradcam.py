"""GradCAM on ALBEF's fusion cross-attention (the released ``grounding_eval_singlegpu*.py``; docs/model.md, "GradCAM").

``P``: the ``gradcam_layer`` cross-attention probabilities (after softmax, before dropout),
[B, heads, L, 1+N]; ``s``: the ITM logit of class 1, pre-softmax; ``G = ds/dP``.

* :func:`gradcam_map` is the core both recipes share: drop the image class-token column,
  ``cam = P * clamp(G, min=0) * text_mask``, reshape to the patch grid, mean over heads,
  then over ALL text positions (padding zeros and [CLS] included; :func:`mean_over_heads_and_text`).
* :func:`gradcam_eval` is the evaluation recipe: eval mode, no ReLU, no normalisation, a
  first-order gradient, nothing reaches the image encoder.
* :func:`gradcam_train` is the AMC training recipe: the gradient is taken with
  ``create_graph=True`` so a loss on the map back-propagates through it (second order), then
  ReLU, per-sample min-max normalisation and bilinear upsampling to the mask size.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from amc.models.albef import ALBEF


def patch_grid(attention: Tensor, grid: tuple[int, int] | None) -> tuple[int, int]:
    """(h, w) of the image patches of ``attention`` [..., 1+N]: ``grid`` checked, or the square one."""
    patches = attention.shape[-1] - 1
    if grid is None:
        side = math.isqrt(patches)
        if side * side != patches:
            raise ValueError(f"{patches} image patches are not a square grid; pass grid=(h, w)")
        return side, side
    if grid[0] * grid[1] != patches:
        raise ValueError(f"grid {tuple(grid)} does not hold the {patches} image patches")
    return int(grid[0]), int(grid[1])


def gradcam_map(
    attention: Tensor, grad: Tensor, attention_mask: Tensor, grid: tuple[int, int] | None = None
) -> Tensor:
    """[B, heads, L, 1+N] probabilities and gradients, [B, L] text mask -> [B, h, w] map."""
    grid = patch_grid(attention, grid)
    return mean_over_heads_and_text(attention[..., 1:] * grad[..., 1:].clamp(min=0), attention_mask, grid)


def mean_over_heads_and_text(values: Tensor, attention_mask: Tensor, grid: tuple[int, int]) -> Tensor:
    """[B, heads, L, N] per head and text position (patch columns only), [B, L] text mask -> [B, h, w]:
    padding rows zeroed, mean over heads, then over ALL L text positions ([CLS] and padding included).

    GradCAM's reduction; the ``attention`` explainer (:mod:`amc.explainers`) averages the same way.
    """
    batch, heads, length, _ = values.shape
    mask = attention_mask[:, None, :, None].to(values.dtype)
    return (values * mask).reshape(batch, heads, length, *grid).mean(dim=1).mean(dim=1)


def gradcam_eval(
    model: ALBEF,
    image_embeds: Tensor,
    input_ids: Tensor,
    attention_mask: Tensor,
    image_index: Tensor | None = None,
) -> Tensor:
    """The evaluation recipe: one [h, w] map per phrase, [B, h, w], detached.

    The caller puts the model in eval mode and computes ``image_embeds`` with
    :meth:`ALBEF.encode_image` under ``torch.no_grad()`` (or inference_mode; this function
    itself must not run under inference_mode); they are detached here anyway, so
    no gradient reaches the image encoder. ``image_index`` [B] gives each phrase's row of
    ``image_embeds`` (one image, many phrases). The summed class-1 ITM logit is differentiated
    w.r.t. the captured cross-attention only: no parameter's ``.grad`` is touched.
    """
    if torch.is_inference_mode_enabled():
        raise RuntimeError("gradcam_eval needs autograd: call it under torch.no_grad(), not inference_mode()")
    image_embeds = image_embeds.detach()
    if image_embeds.is_inference():  # made under inference_mode: a normal copy can enter the graph
        image_embeds = image_embeds.clone()
    with torch.no_grad():  # the text-only layers are not on the path from P to s
        text_embeds = model.encode_text(input_ids, attention_mask)
    with torch.enable_grad():
        # With image_index, the cross-attention keys/values are projected once per image.
        fused = model.fuse(
            text_embeds, attention_mask, image_embeds, capture_cross_attention=True, image_index=image_index
        )
        score = model.itm_logits(fused.hidden_states[:, 0, :])[:, 1].sum()
        (grad,) = torch.autograd.grad(score, fused.cross_attention)
    return gradcam_map(fused.cross_attention.detach(), grad, attention_mask).detach()


def gradcam_train(
    cross_attention: Tensor,
    itm_score: Tensor,
    attention_mask: Tensor,
    grid: tuple[int, int] | None,
    out_size: int | tuple[int, int],
) -> Tensor:
    """The AMC training recipe: [B, out, out] maps in [0, 1], differentiable (second order).

    ``cross_attention`` is :attr:`FusionOutput.cross_attention` of the positive pairs and
    ``itm_score`` their class-1 ITM logits ([B] or already summed) from the same forward pass.
    """
    (grad,) = torch.autograd.grad(itm_score.sum(), cross_attention, create_graph=True)
    cam = gradcam_map(cross_attention, grad, attention_mask, grid).relu()
    batch, h, w = cam.shape
    flat = cam.reshape(batch, h * w)
    # The released code's in-place ``A -= min; A /= (max + 1e-7)``: max is taken after subtracting.
    flat = flat - flat.min(dim=1, keepdim=True).values
    flat = flat / (flat.max(dim=1, keepdim=True).values + 1e-7)
    size = (out_size, out_size) if isinstance(out_size, int) else tuple(out_size)
    return F.interpolate(flat.reshape(batch, 1, h, w), size=size, mode="bilinear", align_corners=False)[:, 0]
