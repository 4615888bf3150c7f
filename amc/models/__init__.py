"""ALBEF model, its configuration, tokenizer and checkpoint conversion.

The names below load on first use, so that ``amc.models.config`` (no torch) can be imported
without the model code: the workflow reads model configurations when it builds its jobs.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from amc.models.albef import ALBEF, FusionOutput
    from amc.models.config import ModelConfig, TextConfig, VisionConfig

_HOMES = {
    "ALBEF": "amc.models.albef",
    "FusionOutput": "amc.models.albef",
    "ModelConfig": "amc.models.config",
    "TextConfig": "amc.models.config",
    "VisionConfig": "amc.models.config",
}

__all__ = ["ALBEF", "FusionOutput", "ModelConfig", "TextConfig", "VisionConfig"]


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
