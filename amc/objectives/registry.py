"""The objective registry: the base class, its output, and building a method's objectives by name.

An objective is a class registered under a name with :func:`register_objective`; a run
configuration's ``method.objectives`` maps names to hyperparameters, and
:func:`build_objectives` instantiates them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from amc.io import AmcError
from amc.objectives.context import StepContext


@dataclass
class ObjectiveOutput:
    """``loss`` is the weighted contribution to the total; ``logs`` holds detached terms to record."""

    loss: torch.Tensor
    logs: dict[str, float] = field(default_factory=dict)


OBJECTIVES: dict[str, type[Objective]] = {}


def register_objective(name: str):
    """Class decorator: make an objective selectable by ``name`` in a run configuration."""

    def decorate(cls):
        if name in OBJECTIVES and OBJECTIVES[name] is not cls:
            raise ValueError(f"objective {name!r} registered twice")
        cls.name = name
        OBJECTIVES[name] = cls
        return cls

    return decorate


class Objective:
    """Base class. Subclasses take their hyperparameters as keyword arguments."""

    name: str = ""
    needs_gradcam: bool = False
    needs_boxes: bool = False

    def __init__(self, weight: float = 1.0):
        self.weight = float(weight)

    def setup(self, model) -> None:
        """Called once by the trainer after the starting weights are loaded (e.g. to freeze a teacher copy)."""

    def __call__(self, ctx: StepContext) -> ObjectiveOutput:
        raise NotImplementedError


def build_objectives(spec: dict[str, dict[str, Any] | None]) -> list[Objective]:
    """Instantiate the objectives of a method from ``{name: hyperparameters}``.

    An objective is off when its entry is ``null``, ``{enabled: false}`` or has ``weight: 0``.
    Unknown names and unknown hyperparameters are errors that name them.
    """
    import baselines  # noqa: F401  (registers the baselines' objectives)

    objectives = []
    for name, params in spec.items():
        if params is None:
            continue
        params = dict(params)
        if params.pop("enabled", True) is False or float(params.get("weight", 1.0)) == 0.0:
            continue
        if name not in OBJECTIVES:
            raise AmcError(f"unknown objective {name!r}; registered: {', '.join(sorted(OBJECTIVES))}")
        try:
            objectives.append(OBJECTIVES[name](**params))
        except TypeError as error:
            raise AmcError(f"objective {name!r}: {error}") from None
    if not objectives:
        raise AmcError("the method has no objective enabled")
    return objectives
