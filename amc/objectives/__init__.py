"""Training objectives as plug-ins.

A method is a name plus a set of objectives with their hyperparameters (see the
run configuration in docs/architecture.md). Each objective is a class
registered under a name with :func:`register_objective`; it receives a
:class:`StepContext` that computes the pieces objectives share (encoder
outputs, contrastive similarities, the positive-pair fusion pass) once, lazily,
and returns an :class:`ObjectiveOutput`. The ALBEF objectives (``itc``, ``itm``,
``mlm``) follow the released ``model_pretrain.py``; ``amc`` adds the AMC loss on
the GradCAM of the positive pair. An objective of another package (the baselines',
``baselines/``) joins from outside: a run configuration names its class as ``module:Class``
(:mod:`amc.objectives.registry`); nothing in ``amc`` imports ``baselines``.

Modules: :mod:`~amc.objectives.registry` (the base class, the registry, :func:`build_objectives`),
:mod:`~amc.objectives.context` (the batch and the step's shared pieces),
:mod:`~amc.objectives.albef` (``itc``, ``itm``, ``mlm``), :mod:`~amc.objectives.amc` (``amc``).
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
    CLASS_KEY,
    OBJECTIVES,
    Objective,
    ObjectiveOutput,
    build_objectives,
    load_objective_class,
    objective_class,
    register_objective,
)

__all__ = [
    "CLASS_KEY",
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
    "load_objective_class",
    "mask_tokens",
    "objective_class",
    "register_objective",
]
