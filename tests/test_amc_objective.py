"""The `amc` objective on a batch: every sample's box mask reaches the loss, in order."""

from __future__ import annotations

import pytest
import torch

from amc.gradcam import gradcam_train
from amc.io import AmcError
from amc.losses import amc_loss
from amc.objectives import AttentionMapConsistency, StepContext, TrainBatch
from tests.helpers import SPECIAL_IDS, tiny_batch, tiny_model

MASK_SIZE = 16


def box_masks(batch: int, seed: int = 0) -> torch.Tensor:
    """One box per sample, each in another place (no mask is its own mirror image)."""
    masks = torch.zeros(batch, MASK_SIZE, MASK_SIZE)
    for row in range(batch):
        masks[row, 1 + row : 6 + row, 2 : 5 + 2 * row] = 1.0
    return masks


def run(model, batch: TrainBatch, objective: AttentionMapConsistency):
    ctx = StepContext(model, batch, 0.4, torch.Generator().manual_seed(0), True, SPECIAL_IDS)
    return objective(ctx), ctx


@pytest.fixture(scope="module")
def model():
    return tiny_model(seed=0)


def test_the_loss_is_the_amc_loss_of_each_sample_with_its_own_box(model):
    images, ids, mask = tiny_batch(model)
    masks = box_masks(3)
    objective = AttentionMapConsistency(weight=0.5)
    out, _ = run(model, TrainBatch(images, ids, mask, box_mask=masks), objective)

    # The same terms computed here from a fresh forward pass of the same batch.
    ctx = StepContext(model, TrainBatch(images, ids, mask), 0.4, torch.Generator(), True, SPECIAL_IDS)
    heatmap = gradcam_train(
        ctx.positive_fusion.cross_attention, ctx.itm_positive_logits[:, 1], mask, model.image_grid, MASK_SIZE
    )
    terms = amc_loss(heatmap.float(), masks, **objective.params)
    torch.testing.assert_close(out.loss, 0.5 * terms.total)
    assert out.logs["loss_amc"] == pytest.approx(terms.total.item())
    assert out.logs["l_mean"] == pytest.approx(terms.l_mean.item())

    # Each sample counts: moving only the last sample's box changes the loss.
    moved = masks.clone()
    moved[-1] = moved[-1].flip(-1)
    out_moved, _ = run(model, TrainBatch(images, ids, mask, box_mask=moved), objective)
    assert not torch.allclose(out_moved.loss, out.loss)


def test_no_box_masks_is_an_error(model):
    images, ids, mask = tiny_batch(model, lengths=(7, 4))
    with pytest.raises(AmcError, match="needs box masks"):
        run(model, TrainBatch(images, ids, mask), AttentionMapConsistency())
