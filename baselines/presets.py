"""The baselines as named recipes the workflow can take as defaults.

``METHODS[name]`` is a plain mapping (YAML/JSON-friendly):

``label``       how tables and figures name the method
``kind``        ``none``: evaluate the starting checkpoint as it is (no ``amc train``);
                ``finetune``: run ``amc train`` from the starting checkpoint
``data``        the ``data`` section it sets in the run configuration: ``kind`` is ``records``
                (VG phrases with boxes) or ``captions`` (image-caption pairs, no boxes; the
                workflow supplies ``data.path``); empty when nothing trains
``objectives``  ``method.objectives`` of the run configuration

Everything else (starting checkpoint, schedule, seeds, image size) comes from the same run
configuration as AMC, so a baseline differs from AMC only in what is listed here.
:func:`train_overrides` turns a preset into ``key=value`` overrides for ``amc train``.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from amc.io import AmcError

# The ALBEF objectives as AMC's run configuration keeps them (docs/architecture.md).
ALBEF_OBJECTIVES: dict[str, dict[str, Any]] = {
    "itc": {"weight": 1.0},
    "itm": {"weight": 1.0},
    "mlm": {"weight": 1.0, "probability": 0.15},
}

METHODS: dict[str, dict[str, Any]] = {
    "albef": {
        "label": "ALBEF",
        "kind": "none",
        "data": {},
        "objectives": {},
    },
    "albef_vg": {
        "label": "ALBEF + VG (no AMC)",
        "kind": "finetune",
        "data": {"kind": "records"},
        "objectives": copy.deepcopy(ALBEF_OBJECTIVES),
    },
    "vmrm_style": {
        "label": "VMRM-style",
        "kind": "finetune",
        "data": {"kind": "captions"},
        "objectives": {
            **copy.deepcopy(ALBEF_OBJECTIVES),
            # Defaults of baselines/vmrm_style.py written out, so the resolved config shows them.
            "vmrm_contrastive": {
                "class": "baselines.vmrm_style:VmrmContrastive",
                "weight": 1.0,
                "temperature": 0.07,
                "target": "topk",
                "top_k": 1,
                "target_temperature": 0.03,
                "token_source": "fused",
            },
            "vmrm_consistency": {
                "class": "baselines.vmrm_style:VmrmConsistency",
                "weight": 1.0,
                "temperature": 0.07,
                "target_temperature": None,
                "aggregate": "caption",
                "token_source": "fused",
            },
        },
    },
}


def method_preset(name: str) -> dict[str, Any]:
    """A copy of ``METHODS[name]``; an unknown name is an error listing the known ones."""
    if name not in METHODS:
        raise AmcError(f"unknown baseline {name!r}; known: {', '.join(sorted(METHODS))}")
    return copy.deepcopy(METHODS[name])


def train_overrides(name: str) -> list[str]:
    """``key=value`` overrides of ``amc train`` that turn AMC's run configuration into baseline ``name``.

    Values are JSON, which the trainer parses as YAML. A ``none`` baseline does not train.
    """
    preset = method_preset(name)
    if preset["kind"] != "finetune":
        raise AmcError(
            f"baseline {name!r} is evaluated as it is (kind {preset['kind']!r}): it has no training run"
        )
    return [
        f"method.name={name}",
        *(f"data.{key}={json.dumps(value)}" for key, value in preset["data"].items()),
        f"method.objectives={json.dumps(preset['objectives'])}",
    ]
