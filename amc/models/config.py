"""Model configuration: one dataclass per encoder and one for the whole ALBEF model.

Field names follow the originals so that a reader can compare them directly:
``VisionConfig`` mirrors the arguments ALBEF passes to its ``VisionTransformer``,
``TextConfig`` is ALBEF's ``configs/config_bert.json`` (every key of that file is
accepted), and ``ModelConfig`` holds the rest of ALBEF's pretraining config
(``image_res``, ``embed_dim``, ``queue_size``, ``momentum``, ``temp``) plus
``gradcam_layer``. Every field is documented in ``docs/model.md``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from amc.io import AmcError, read_json, read_yaml

ATTENTION_MODES = ("fast", "reference")

# Keys of ALBEF's config_bert.json that describe the file, not the model; accepted and ignored
# so that config_bert.json can be used as the ``text`` section verbatim.
_BERT_JSON_INFORMATIONAL = frozenset({"architectures", "model_type"})


@dataclass
class VisionConfig:
    """The ViT image encoder (ALBEF: ViT-B/16, DeiT-initialised)."""

    patch_size: int = 16
    width: int = 768
    depth: int = 12
    heads: int = 12
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    layer_norm_eps: float = 1e-6
    drop_path_rate: float = 0.0
    in_chans: int = 3
    # std of the normal initialisation of the Linear layers. 0.02 is timm's own init (ALBEF starts
    # from DeiT weights, so it never matters there); a tiny model trained from scratch needs more.
    initializer_range: float = 0.02

    def validate(self, where: str = "vision") -> None:
        _positive(self, ("patch_size", "width", "depth", "heads", "in_chans"), where)
        if not self.initializer_range > 0:
            raise AmcError(f"{where}: initializer_range must be positive, got {self.initializer_range!r}")
        if self.width % self.heads:
            raise AmcError(f"{where}: width {self.width} is not divisible by heads {self.heads}")
        if self.mlp_ratio <= 0:
            raise AmcError(f"{where}: mlp_ratio must be positive, got {self.mlp_ratio}")


@dataclass
class TextConfig:
    """The BERT text encoder; layers >= ``fusion_layer`` add cross-attention over the image tokens."""

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    fusion_layer: int = 6
    encoder_width: int = 768
    max_position_embeddings: int = 512
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    layer_norm_eps: float = 1e-12
    type_vocab_size: int = 2
    hidden_act: str = "gelu"
    initializer_range: float = 0.02
    pad_token_id: int = 0

    def validate(self, where: str = "text") -> None:
        _positive(
            self,
            (
                "vocab_size",
                "hidden_size",
                "num_hidden_layers",
                "num_attention_heads",
                "intermediate_size",
                "encoder_width",
                "max_position_embeddings",
                "type_vocab_size",
            ),
            where,
        )
        if self.hidden_size % self.num_attention_heads:
            raise AmcError(
                f"{where}: hidden_size {self.hidden_size} is not divisible by "
                f"num_attention_heads {self.num_attention_heads}"
            )
        if not 0 <= self.fusion_layer < self.num_hidden_layers:
            raise AmcError(
                f"{where}: fusion_layer {self.fusion_layer} must be in [0, num_hidden_layers="
                f"{self.num_hidden_layers})"
            )
        if self.hidden_act not in _ACTIVATIONS:
            raise AmcError(f"{where}: hidden_act {self.hidden_act!r} is not one of {sorted(_ACTIVATIONS)}")
        if not 0 <= self.pad_token_id < self.vocab_size:
            raise AmcError(f"{where}: pad_token_id {self.pad_token_id} outside the vocabulary")


_ACTIVATIONS = frozenset({"gelu", "relu", "gelu_new", "gelu_pytorch_tanh"})


@dataclass
class ModelConfig:
    """The whole ALBEF model: encoders, heads, momentum copies and queues."""

    image_res: int = 256
    embed_dim: int = 256
    gradcam_layer: int = 8
    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextConfig = field(default_factory=TextConfig)
    queue_size: int = 65536
    momentum: float = 0.995
    temp: float = 0.07
    # "fast": SDPA where no attention probabilities or second-order gradients are needed;
    # "reference": explicit softmax everywhere (the released code's path). Not architecture.
    attention: str = "fast"

    # Fields that do not change the weights: a checkpoint made with other values loads fine.
    RUNTIME_FIELDS = ("image_res", "gradcam_layer", "queue_size", "momentum", "temp", "attention")

    def __post_init__(self) -> None:
        if isinstance(self.vision, dict):
            self.vision = _build(VisionConfig, self.vision, "vision", None)
        if isinstance(self.text, dict):
            self.text = _build(TextConfig, self.text, "text", None)

    # ----------------------------------------------------------------- construction
    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str | None = None) -> ModelConfig:
        """Build and validate; an unknown key is an error naming ``source`` and the key."""
        if not isinstance(data, dict):
            raise AmcError(f"{source or 'model config'}: expected a mapping, got {type(data).__name__}")
        data = dict(data)
        vision = _build(VisionConfig, data.pop("vision", {}) or {}, "vision", source)
        text = _build(TextConfig, data.pop("text", {}) or {}, "text", source)
        config = _build(cls, {**data, "vision": vision, "text": text}, None, source)
        config.validate(source)
        return config

    @classmethod
    def from_file(cls, path: str | Path) -> ModelConfig:
        """Read a YAML or JSON file (the format is chosen by the suffix; YAML otherwise)."""
        path = Path(path)
        if not path.is_file():
            raise AmcError(f"{path}: model config not found")
        data = read_json(path) if path.suffix.lower() == ".json" else read_yaml(path, "model config")
        if data is None:
            raise AmcError(f"{path}: model config is empty")
        return cls.from_dict(data, source=str(path))

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        return data

    def replace(self, **changes: Any) -> ModelConfig:
        """A copy with some top-level fields changed, validated."""
        config = dataclasses.replace(self, **changes)
        config.validate()
        return config

    def architecture_dict(self) -> dict[str, Any]:
        """The fields that determine the weights' names, shapes and meaning."""
        data = self.to_dict()
        for name in self.RUNTIME_FIELDS:
            data.pop(name)
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob", "initializer_range"):
            data["text"].pop(name)
        data["vision"].pop("drop_path_rate")
        data["vision"].pop("initializer_range")
        return data

    # ------------------------------------------------------------------- checks
    def validate(self, source: str | None = None) -> None:
        where = source or "model config"
        self.vision.validate(f"{where}: vision")
        self.text.validate(f"{where}: text")
        _positive(self, ("image_res", "embed_dim", "queue_size"), where)
        if self.image_res % self.vision.patch_size:
            raise AmcError(
                f"{where}: image_res {self.image_res} is not a multiple of patch_size {self.vision.patch_size}"
            )
        if self.text.encoder_width != self.vision.width:
            raise AmcError(
                f"{where}: text.encoder_width {self.text.encoder_width} must equal vision.width "
                f"{self.vision.width} (cross-attention reads the image tokens)"
            )
        if not self.text.fusion_layer <= self.gradcam_layer < self.text.num_hidden_layers:
            raise AmcError(
                f"{where}: gradcam_layer {self.gradcam_layer} must be a fusion layer, i.e. in "
                f"[fusion_layer={self.text.fusion_layer}, num_hidden_layers={self.text.num_hidden_layers})"
            )
        if not 0.0 <= self.momentum < 1.0:
            raise AmcError(f"{where}: momentum must be in [0, 1), got {self.momentum}")
        if self.temp <= 0:
            raise AmcError(f"{where}: temp must be positive, got {self.temp}")
        if self.attention not in ATTENTION_MODES:
            raise AmcError(f"{where}: attention {self.attention!r} is not one of {ATTENTION_MODES}")

    @property
    def fusion_layers(self) -> range:
        """Absolute indices of the text layers with cross-attention (fusion_layer .. last)."""
        return range(self.text.fusion_layer, self.text.num_hidden_layers)

    @property
    def image_grid(self) -> tuple[int, int]:
        side = self.image_res // self.vision.patch_size
        return side, side


def _build(cls: type, data: Any, section: str | None, source: str | None):
    where = source or "model config"
    label = f"{section}." if section else ""
    if isinstance(data, cls):
        return data
    if not isinstance(data, dict):
        raise AmcError(f"{where}: {section or 'model config'} must be a mapping, got {type(data).__name__}")
    known = {f.name: f.type for f in dataclasses.fields(cls)}
    values = {}
    for key, value in data.items():
        if cls is TextConfig and key in _BERT_JSON_INFORMATIONAL:
            continue
        if key not in known:
            raise AmcError(f"{where}: unknown key {label}{key} (known: {', '.join(sorted(known))})")
        if not _of_type(value, known[key]):
            raise AmcError(f"{where}: {label}{key} must be {_TYPE_NAMES[known[key]]}, got {value!r}")
        values[key] = value
    try:
        return cls(**values)
    except TypeError as error:
        raise AmcError(f"{where}: {error}") from None


# The scalar field types of the dataclasses above (annotations are strings: `from __future__`).
_TYPE_NAMES = {"int": "a whole number", "float": "a finite number", "bool": "true or false", "str": "text"}


def _of_type(value: Any, annotation: str) -> bool:
    if annotation == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation == "float":
        return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if annotation == "bool":
        return isinstance(value, bool)
    if annotation == "str":
        return isinstance(value, str)
    return True  # the nested sections, built by _build


def _positive(obj: Any, names: tuple[str, ...], where: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise AmcError(f"{where}: {name} must be a positive integer, got {value!r}")
