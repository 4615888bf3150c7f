"""The AMC objective: the AMC loss (:mod:`amc.losses`) on the GradCAM of the positive pairs."""

from __future__ import annotations

from amc.gradcam import gradcam_train
from amc.io import AmcError
from amc.losses import DELTA_MAX, DELTA_MEAN, PER_SAMPLE_MEAN, WEIGHT_MAX, WEIGHT_MEAN, amc_loss
from amc.objectives.context import StepContext
from amc.objectives.registry import Objective, ObjectiveOutput, register_objective


@register_objective("amc")
class AttentionMapConsistency(Objective):
    """The AMC loss on the training-recipe GradCAM of the positive pairs, each with its box mask."""

    needs_gradcam = True
    needs_boxes = True

    def __init__(
        self,
        weight: float = 1.0,
        delta_mean: float = DELTA_MEAN,
        delta_max: float = DELTA_MAX,
        weight_mean: float = WEIGHT_MEAN,
        weight_max: float = WEIGHT_MAX,
        per_sample_mean: bool = PER_SAMPLE_MEAN,
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
        fusion = ctx.positive_fusion
        heatmap = gradcam_train(
            fusion.cross_attention,
            ctx.itm_positive_logits[:, 1],
            batch.attention_mask,
            ctx.model.image_grid,
            batch.box_mask.shape[-1],
        )
        terms = amc_loss(heatmap.float(), batch.box_mask.float(), **self.params)
        logs = {"loss_amc": terms.total.item(), "l_mean": terms.l_mean.item(), "l_max": terms.l_max.item()}
        return ObjectiveOutput(self.weight * terms.total, logs)
