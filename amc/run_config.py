"""The run configuration of ``amc train`` and ``amc pretrain``: defaults, file, overrides, one check, types.

:func:`load_run_config` merges the defaults (:data:`DEFAULTS`), the YAML file and the
``dotted.key=value`` overrides as a dict, checks it once against :data:`RUN_CONFIG_SCHEMA` (an
:class:`~amc.io.AmcError` names the file or the override and the key), and returns it typed: a
:class:`RunConfig`. Checkpoints and ``config.resolved.yaml`` store :meth:`RunConfig.to_dict`, and a
run resumes only from files whose stored dict :meth:`RunConfig.matches`.
"""

from __future__ import annotations

import copy
import dataclasses
import re
from dataclasses import dataclass
from typing import Any

import yaml

from amc.io import AmcError, find_non_finite, import_jsonschema, read_yaml, schema_validator
from amc.losses import DELTA_MAX, DELTA_MEAN, WEIGHT_MAX, WEIGHT_MEAN
from amc.selection import SelectionSplit, parse_selection

# The one place the defaults are written; the dataclasses below have none, so a RunConfig is only
# ever built from a checked, complete dict.
DEFAULTS: dict[str, Any] = {
    "model_config": None,
    "vocab": None,
    "init_checkpoint": None,
    "data": {
        "kind": "records",
        "path": None,
        "image_res": 256,
        "mask_size": 256,
        "max_words": 50,  # released configs/Pretrain.yaml
        "max_tokens": 25,
        "augment": {
            # released: the released code's albumentations pipeline (OpenCV, uint8); torchvision:
            # bicubic PIL resize and torchvision's ColorJitter (amc.data.transforms).
            "pipeline": "released",
            "hflip": 0.5,
            "grayscale": 0.2,
            "color_jitter": [0.4, 0.4, 0.4, 0.4],
            "color_jitter_p": 0.5,
            "swap_left_right": False,
        },
    },
    "method": {
        "name": "amc",
        "objectives": {
            "itc": {"weight": 1.0},
            "itm": {"weight": 1.0},
            "mlm": {"weight": 1.0, "probability": 0.15},
            # amc.losses owns these values (the released ones)
            "amc": {
                "delta_mean": DELTA_MEAN,
                "delta_max": DELTA_MAX,
                "weight_mean": WEIGHT_MEAN,
                "weight_max": WEIGHT_MAX,
            },
        },
    },
    "optim": {
        "lr": 1.0e-5,
        "min_lr": 1.0e-6,
        "weight_decay": 0.02,
        # Steps are optimiser steps of the global batch (batch_size * grad_accum * processes).
        "schedule": "released",  # released (staircase warm-up, cosine per epoch) | cosine (per step)
        "warmup_lr": 1.0e-6,  # released: the first stair
        "warmup_stairs": 20,  # released: stairs in epoch 0 (`warmup_epochs: 20`)
        "stair_steps": 100,  # released: optimiser steps per stair
        "warmup_steps": 100,  # cosine: linear warm-up steps
        "epochs": 30,
        "max_steps": None,
        "batch_size": 64,
        "grad_accum": 1,
    },
    "alpha": 0.4,
    "seed": 0,
    "num_workers": 2,
    "log_every": 10,
    "save_every_steps": None,
    "precision": "tf32",  # tf32 (released: fp32, TF32 matmuls on CUDA) | fp32 | bf16
    # Best epoch per benchmark on its validation split, as the released models were chosen
    # (amc.selection); empty = off.
    "selection": {"splits": []},
}

# Sections whose keys are free-form (any registered objective, any hyperparameter).
FREE_FORM = ("method.objectives",)

SCHEDULES = ("released", "cosine")  # optim.schedule, see lr_at
PRECISIONS = ("tf32", "fp32", "bf16")  # precision, see numerics

# The type and range of every value of the run configuration, checked once by load_run_config
# after the defaults, the file and the overrides are merged. Every number must also be finite.
_INT = {"type": "integer"}
_POSITIVE_INT = {"type": "integer", "minimum": 1}
_COUNT = {"type": "integer", "minimum": 0}
_NONNEG = {"type": "number", "minimum": 0}
_PROBABILITY = {"type": "number", "minimum": 0, "maximum": 1}
_PATH = {"type": "string", "minLength": 1}


def _section(properties: dict, required: tuple[str, ...] = ()) -> dict:
    return {"type": "object", "properties": properties, "required": list(required)}


_OBJECTIVE_PARAMETERS = {  # known hyperparameters of the suite's objectives (baselines check theirs)
    "itc": {"mode": {"enum": ["albef", "in_batch"]}},
    "itm": {"negatives": {"enum": ["hard", "random"]}},
    "mlm": {"probability": {"type": "number", "exclusiveMinimum": 0, "maximum": 1}},
    "amc": {
        "delta_mean": _NONNEG,
        "delta_max": _NONNEG,
        "weight_mean": _NONNEG,
        "weight_max": _NONNEG,
        "per_sample_mean": {"type": "boolean"},
    },
}
_OBJECTIVE = {
    "type": ["object", "null"],
    "properties": {"weight": _NONNEG, "enabled": {"type": "boolean"}},
    "additionalProperties": {"type": ["number", "string", "boolean", "null"]},
}
RUN_CONFIG_SCHEMA: dict[str, Any] = _section(
    {
        "model_config": _PATH,
        "vocab": _PATH,
        "init_checkpoint": {"type": ["string", "null"], "minLength": 1},
        "data": _section(
            {
                "kind": {"enum": ["records", "captions"]},
                "path": _PATH,
                "image_res": _POSITIVE_INT,
                "mask_size": _POSITIVE_INT,
                "max_words": _POSITIVE_INT,
                "max_tokens": {"type": "integer", "minimum": 2},
                "augment": _section(
                    {
                        "pipeline": {"enum": ["released", "torchvision"]},
                        "hflip": _PROBABILITY,
                        "grayscale": _PROBABILITY,
                        "color_jitter": {"type": "array", "items": _NONNEG, "minItems": 4, "maxItems": 4},
                        "color_jitter_p": _PROBABILITY,
                        "swap_left_right": {"type": "boolean"},
                    }
                ),
            }
        ),
        "method": _section(
            {
                "name": {"type": "string", "minLength": 1},
                "objectives": {
                    "type": "object",
                    "minProperties": 1,
                    "properties": {
                        name: {**_OBJECTIVE, "properties": {**_OBJECTIVE["properties"], **parameters}}
                        for name, parameters in _OBJECTIVE_PARAMETERS.items()
                    },
                    "additionalProperties": _OBJECTIVE,
                },
            }
        ),
        "optim": _section(
            {
                "lr": {"type": "number", "exclusiveMinimum": 0},
                "min_lr": _NONNEG,
                "weight_decay": _NONNEG,
                "schedule": {"enum": list(SCHEDULES)},
                "warmup_lr": _NONNEG,
                "warmup_stairs": _COUNT,
                "stair_steps": _POSITIVE_INT,
                "warmup_steps": _COUNT,
                "epochs": _POSITIVE_INT,
                "max_steps": {"type": ["integer", "null"], "minimum": 1},  # null: no limit
                "batch_size": _POSITIVE_INT,
                "grad_accum": _POSITIVE_INT,
            }
        ),
        "alpha": _PROBABILITY,
        "seed": _COUNT,
        "num_workers": _COUNT,
        "log_every": _POSITIVE_INT,
        "save_every_steps": {"type": ["integer", "null"], "minimum": 1},  # null: once per epoch only
        "precision": {"enum": list(PRECISIONS)},
        "selection": _section(
            {
                "splits": {
                    "type": "array",
                    "items": {
                        **_section(
                            {
                                "name": {"type": "string", "minLength": 1},
                                "records": _PATH,
                                "image_res": {"type": ["integer", "null"], "minimum": 1},
                                "max_words": {"type": ["integer", "null"], "minimum": 1},
                                "resize": {"enum": [None, "auto", "cv2-linear", "pil-bicubic"]},
                            },
                            required=("name", "records"),
                        ),
                        "additionalProperties": False,
                    },
                }
            }
        ),
    },
)


def _is_free_form(dotted: str) -> bool:
    return any(dotted.startswith(section + ".") for section in FREE_FORM)


_EXPONENT_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _set_dotted(config: dict, dotted: str, value: Any, source: str, sources: dict[str, str]) -> None:
    """Set ``a.b.c`` in ``config``; unknown keys are errors outside the free-form sections.

    ``sources`` records where each key was set last (the file, or the override), for error messages.
    """
    *parents, last = dotted.split(".")
    node = config
    for depth, key in enumerate(parents):
        if node.get(key) is None:
            if key not in node and not _is_free_form(".".join(parents[: depth + 1])):
                raise AmcError(f"{source}: unknown configuration key {dotted!r}")
            node[key] = {}
        node = node[key]
        if not isinstance(node, dict):
            raise AmcError(f"{source}: {'.'.join(parents[: depth + 1])!r} is a value, not a section")
    if last not in node and not _is_free_form(dotted):
        raise AmcError(f"{source}: unknown configuration key {dotted!r}")
    if isinstance(value, str) and _EXPONENT_NUMBER.fullmatch(value):
        value = float(value)  # YAML 1.1 reads 1e-5 (no dot) as a string; every user writes it
    node[last] = value
    sources[dotted] = source


def _merge(config: dict, update: dict, source: str, sources: dict[str, str], prefix: str = "") -> None:
    """Merge a loaded YAML mapping into ``config`` key by key, with the same checks as overrides."""
    for key, value in update.items():
        dotted = f"{prefix}{key}"
        if not isinstance(key, str):
            raise AmcError(f"{source}: configuration key {dotted!r} is not text")
        if dotted in FREE_FORM:  # a method's objectives replace the defaults
            _set_dotted(config, dotted, copy.deepcopy(value), source, sources)
        elif isinstance(value, dict) and not _is_free_form(dotted):
            _merge(config, value, source, sources, dotted + ".")
        else:
            _set_dotted(config, dotted, value, source, sources)


def _source_of(dotted: str, sources: dict[str, str]) -> str:
    """Where the value at ``dotted`` (or the section holding it) was set: a file, an override, or the defaults."""
    parts = dotted.split(".")
    for end in range(len(parts), 0, -1):
        if ".".join(parts[:end]) in sources:
            return sources[".".join(parts[:end])]
    return "run configuration defaults"


def validate_run_config(config: dict, sources: dict[str, str] | None = None) -> None:
    """Check ``config`` against :data:`RUN_CONFIG_SCHEMA` (and every number finite); an AmcError
    names where the value came from (the file or the ``key=value`` override) and the key."""
    best_match = import_jsonschema().exceptions.best_match
    validator = schema_validator(RUN_CONFIG_SCHEMA)
    sources = sources or {}
    error = best_match(validator.iter_errors(config))
    if error is not None:
        dotted = ".".join(str(part) for part in error.absolute_path)
        if error.validator == "type" and error.instance is None:  # a default left null
            if dotted in sources:
                raise AmcError(f"{sources[dotted]}: {dotted}: a value is required, not null")
            raise AmcError(f"run configuration: {dotted!r} is required")
        raise AmcError(f"{_source_of(dotted, sources)}: {dotted or 'run configuration'}: {error.message}")
    if (found := find_non_finite(config)) is not None:
        dotted = ".".join(map(str, found[0]))
        raise AmcError(f"{_source_of(dotted, sources)}: {dotted}: {found[1]} is not a finite number")
    parse_selection(config["selection"])  # what the schema cannot say: unique names, a known resize


def load_run_config(path: str | None, overrides: list[str] = ()) -> RunConfig:
    """Defaults, then the YAML file, then ``dotted.key=value`` overrides (values parsed as YAML);
    the result is validated once (:func:`validate_run_config`), then typed."""
    config = copy.deepcopy(DEFAULTS)
    sources: dict[str, str] = {}
    if path:
        loaded = read_yaml(path, "run configuration")
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise AmcError(f"{path}: expected a mapping at the top level")
        _merge(config, loaded, str(path), sources)
    for item in overrides:
        if "=" not in item:
            raise AmcError(f"override {item!r} is not key=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as error:
            raise AmcError(f"override {item!r}: not a YAML value ({error})") from None
        _set_dotted(config, key.strip(), value, f"command line ({item})", sources)
    validate_run_config(config, sources)
    return RunConfig.from_dict(config)


# --------------------------------------------------------------------------- the typed result
# Field for field the sections of DEFAULTS, in their order (to_dict keeps it, and so does the YAML
# written from it); tests/test_validators.py checks the three agree.


@dataclass(frozen=True)
class AugmentConfig:
    pipeline: str  # released | torchvision (amc.data.transforms)
    hflip: float
    grayscale: float
    color_jitter: list[float]  # brightness, contrast, saturation, hue
    color_jitter_p: float
    swap_left_right: bool


@dataclass(frozen=True)
class DataConfig:
    kind: str  # records (phrases with boxes) | captions
    path: str
    image_res: int
    mask_size: int
    max_words: int
    max_tokens: int
    augment: AugmentConfig


@dataclass(frozen=True)
class MethodConfig:
    name: str
    # objective name -> its hyperparameters (None: switched off); free-form, as any registered
    # objective may be named (amc.objectives.build_objectives checks them)
    objectives: dict[str, dict[str, Any] | None]


@dataclass(frozen=True)
class OptimConfig:
    lr: float
    min_lr: float
    weight_decay: float
    schedule: str  # released | cosine (amc.train.lr_at)
    warmup_lr: float
    warmup_stairs: int
    stair_steps: int
    warmup_steps: int
    epochs: int
    max_steps: int | None  # None: no limit
    batch_size: int  # per process and micro-batch
    grad_accum: int

    @classmethod
    def from_defaults(cls, **values: Any) -> OptimConfig:
        """The default ``optim`` section with ``values`` (an optimiser or a schedule outside a run)."""
        return cls(**{**DEFAULTS["optim"], **values})


@dataclass(frozen=True)
class SelectionConfig:
    splits: list[SelectionSplit]  # [] when selection is off (amc.selection)


@dataclass(frozen=True)
class RunConfig:
    model_config: str
    vocab: str
    init_checkpoint: str | None  # None: random weights
    data: DataConfig
    method: MethodConfig
    optim: OptimConfig
    alpha: float
    seed: int
    num_workers: int
    log_every: int
    save_every_steps: int | None  # None: a checkpoint once per epoch only
    precision: str  # tf32 | fp32 | bf16 (amc.train.numerics)
    selection: SelectionConfig

    @classmethod
    def from_dict(cls, config: dict) -> RunConfig:
        """The typed form of a configuration :func:`validate_run_config` accepted (a copy: nothing is shared)."""
        config = copy.deepcopy(config)
        data, selection = config["data"], config["selection"]
        return cls(
            **{
                **config,
                "data": DataConfig(**{**data, "augment": AugmentConfig(**data["augment"])}),
                "method": MethodConfig(**config["method"]),
                "optim": OptimConfig(**config["optim"]),
                "selection": SelectionConfig([SelectionSplit(**split) for split in selection["splits"]]),
            }
        )

    def to_dict(self) -> dict[str, Any]:
        """The nested dict this configuration was built from, each selection split with all its keys:
        what checkpoints and ``config.resolved.yaml`` store."""
        return dataclasses.asdict(self)

    def matches(self, recorded: Any) -> bool:
        """Whether a stored configuration (``config.resolved.yaml``, a checkpoint's ``run_config``) is this
        one. Those stored before the configuration was typed may leave a selection split's optional keys
        out; they count as null, as here."""
        return isinstance(recorded, dict) and _with_split_defaults(recorded) == self.to_dict()


def _with_split_defaults(config: dict) -> dict:
    """``config`` with each selection split's absent optional keys set to their defaults (null)."""
    selection = config.get("selection")
    splits = selection.get("splits") if isinstance(selection, dict) else None
    if not isinstance(splits, list):
        return config
    optional = {
        f.name: f.default for f in dataclasses.fields(SelectionSplit) if f.default is not dataclasses.MISSING
    }
    filled = [{**optional, **split} if isinstance(split, dict) else split for split in splits]
    return {**config, "selection": {**selection, "splits": filled}}
