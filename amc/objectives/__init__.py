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

from amc.objectives.albef import (
    ImageTextContrastive,
    ImageTextMatching,
    MaskedLanguageModelling,
    mask_tokens,
)
from amc.objectives.amc import AttentionMapConsistency
from amc.objectives.context import Contrastive, Momentum, StepContext, TrainBatch
from amc.objectives.registry import (
    OBJECTIVES,
    Objective,
    ObjectiveOutput,
    build_objectives,
    register_objective,
)

__all__ = [
    "OBJECTIVES",
    "AttentionMapConsistency",
    "Contrastive",
    "ImageTextContrastive",
    "ImageTextMatching",
    "MaskedLanguageModelling",
    "Momentum",
    "Objective",
    "ObjectiveOutput",
    "StepContext",
    "TrainBatch",
    "build_objectives",
    "mask_tokens",
    "register_objective",
]
