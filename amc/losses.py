"""The Attention Map Consistency loss (paper eq. 1-3, as the released code computes it).

``A`` is the training-recipe GradCAM heatmap (ReLU, per-sample min-max, bilinear
to the mask size) and ``M`` the box mask, both ``[B, H, W]``:

- ``L_mean = max(0, mean(A outside) - mean(A inside) + delta_mean)``. The released
  code takes both means over ALL pixels of the whole batch at once (one hinge per
  batch); the paper writes it per sample. ``per_sample_mean=True`` gives the
  paper's reading (a hinge per sample, averaged).
- ``L_max = mean over samples of max(0, max(A outside) - max(A inside) + delta_max)``.
- ``L_amc = weight_mean * L_mean + weight_max * L_max``.

Means "inside"/"outside" are mask-weighted (``sum(A*M)/sum(M)`` and
``sum(A*(1-M))/sum(1-M)``), which is what the released code computes for a
binary mask and stays well defined at the soft edges a bilinear resize creates;
maxima use ``A*M`` and ``A*(1-M)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# Released defaults (AMC-grounding): delta1, delta2, lambda1, lambda2, and the batch-global L_mean.
# The one owner of these values: the objective and the trainer's defaults read them; the workflow
# configurations repeat them (a sweep needs its base value), and tests/test_amc_defaults.py checks that.
DELTA_MEAN = 0.1
DELTA_MAX = 0.5
WEIGHT_MEAN = 0.2
WEIGHT_MAX = 0.8
PER_SAMPLE_MEAN = False


@dataclass
class AMCLoss:
    """The weighted total and its two terms (all differentiable scalars)."""

    total: torch.Tensor
    l_mean: torch.Tensor
    l_max: torch.Tensor


def amc_loss(
    heatmap: torch.Tensor,
    mask: torch.Tensor,
    *,
    delta_mean: float = DELTA_MEAN,
    delta_max: float = DELTA_MAX,
    weight_mean: float = WEIGHT_MEAN,
    weight_max: float = WEIGHT_MAX,
    per_sample_mean: bool = PER_SAMPLE_MEAN,
    eps: float = 1e-7,
) -> AMCLoss:
    """AMC loss of ``heatmap`` against ``mask``, both ``[B, H, W]`` at the same size."""
    if heatmap.shape != mask.shape or heatmap.ndim != 3:
        raise ValueError(
            f"heatmap and mask must both be [B, H, W] of the same shape, got {tuple(heatmap.shape)} "
            f"and {tuple(mask.shape)}"
        )
    mask = mask.to(heatmap.dtype)
    inside, outside = mask, 1.0 - mask

    if per_sample_mean:
        mean_in = (heatmap * inside).sum(dim=(1, 2)) / (inside.sum(dim=(1, 2)) + eps)
        mean_out = (heatmap * outside).sum(dim=(1, 2)) / (outside.sum(dim=(1, 2)) + eps)
        l_mean = torch.relu(mean_out - mean_in + delta_mean).mean()
    else:
        mean_in = (heatmap * inside).sum() / (inside.sum() + eps)
        mean_out = (heatmap * outside).sum() / (outside.sum() + eps)
        l_mean = torch.relu(mean_out - mean_in + delta_mean)

    max_in = (heatmap * inside).flatten(1).max(dim=1).values
    max_out = (heatmap * outside).flatten(1).max(dim=1).values
    l_max = torch.relu(max_out - max_in + delta_max).mean()

    total = weight_mean * l_mean + weight_max * l_max
    return AMCLoss(total=total, l_mean=l_mean, l_max=l_max)
