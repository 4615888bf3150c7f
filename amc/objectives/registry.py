"""The objective registry: the base class, its output, and building a method's objectives by name.

An objective is a class registered under a name with :func:`register_objective`; a run
configuration's ``method.objectives`` maps names to hyperparameters, and
:func:`build_objectives` instantiates them. The built-in objectives (``itc``, ``itm``, ``mlm``,
``amc``) are registered when :mod:`amc.objectives` is imported. An objective of another package
(the baselines') joins from outside: its entry names its class as ``module:Class`` under the
reserved key ``class``, e.g.

    vmrm_contrastive: {class: "baselines.vmrm_style:VmrmContrastive", weight: 1.0}

and :func:`build_objectives` imports that module when it builds the run's objectives. ``amc``
itself never imports such a package.
"""

from __future__ import annotations

import importlib
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


# The key of an objective's entry that names its class as ``module:Class`` (not a hyperparameter).
CLASS_KEY = "class"


def _registered_name(cls: type) -> str | None:
    return next((name for name, registered in OBJECTIVES.items() if registered is cls), None)


def load_objective_class(name: str, target: str) -> type[Objective]:
    """Import the class ``target`` (``module:Class``) and register it as objective ``name``.

    A class that its module registers itself (with :func:`register_objective`) must be named by
    that name; a class that is not registered is registered under ``name``.
    """
    where = f"objective {name!r}: {CLASS_KEY}"
    module_name, colon, class_name = str(target).partition(":")
    if not (colon and module_name and class_name):
        raise AmcError(f"{where} must be 'module:Class', got {target!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise AmcError(f"{where} {target!r}: cannot import {module_name!r} ({error})") from None
    cls = getattr(module, class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, Objective)):
        raise AmcError(f"{where} {target!r}: {class_name!r} is not an Objective class of {module_name!r}")
    registered = _registered_name(cls)
    if registered is None:
        if name in OBJECTIVES:
            raise AmcError(
                f"{where} {target!r}: the name {name!r} is taken by {OBJECTIVES[name].__qualname__}"
            )
        register_objective(name)(cls)
    elif registered != name:
        raise AmcError(f"{where} {target!r}: that class is the objective {registered!r}; name it so")
    return cls


def objective_class(name: str, target: str | None = None) -> type[Objective]:
    """The class of objective ``name``: the one ``target`` names (``module:Class``), else the registered one."""
    if target is not None:
        return load_objective_class(name, target)
    if name not in OBJECTIVES:
        raise AmcError(
            f"unknown objective {name!r}; registered: {', '.join(sorted(OBJECTIVES))}. An objective "
            f"of another package names its class in its entry, {{{CLASS_KEY}: 'module:Class'}}"
        )
    return OBJECTIVES[name]


def build_objectives(spec: dict[str, dict[str, Any] | None]) -> list[Objective]:
    """Instantiate the objectives of a method from ``{name: hyperparameters}``.

    An objective is off when its entry is ``null``, ``{enabled: false}`` or has ``weight: 0``.
    An entry's ``class`` (``module:Class``) names the class of an objective from another package.
    Unknown names and unknown hyperparameters are errors that name them.
    """
    objectives = []
    for name, params in spec.items():
        if params is None:
            continue
        params = dict(params)
        target = params.pop(CLASS_KEY, None)
        if params.pop("enabled", True) is False or float(params.get("weight", 1.0)) == 0.0:
            continue
        cls = objective_class(name, target)
        try:
            objectives.append(cls(**params))
        except TypeError as error:
            raise AmcError(f"objective {name!r}: {error}") from None
    if not objectives:
        raise AmcError("the method has no objective enabled")
    return objectives
