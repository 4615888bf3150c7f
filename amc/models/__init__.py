"""ALBEF model, its configuration, tokenizer and checkpoint conversion."""

from amc.models.albef import ALBEF, FusionOutput
from amc.models.config import ModelConfig, TextConfig, VisionConfig

__all__ = ["ALBEF", "FusionOutput", "ModelConfig", "TextConfig", "VisionConfig"]
