"""What ``amc bench`` measures (:class:`BenchSettings`, one field per command-line option) and its fixed values."""

from __future__ import annotations

import dataclasses
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent.parent
DEFAULT_CPU_CONFIG = "config/models/tiny.yaml"
DEFAULT_GPU_CONFIG = "config/models/albef-base.yaml"

PATHS = ("fast", "reference", "reference-tf32")
REFERENCE_PATHS = ("reference", "reference-tf32")
MEASUREMENTS = ("train", "eval", "equivalence")

# The two training steps compared: AMC fine-tuning and the plain ALBEF step it adds to.
OBJECTIVE_SETS: dict[str, dict[str, dict[str, Any]]] = {
    "amc": {"itc": {}, "itm": {}, "mlm": {"probability": 0.15}, "amc": {}},
    "albef": {"itc": {}, "itm": {}, "mlm": {"probability": 0.15}},
}
ALPHA = 0.4  # momentum distillation weight after the first epoch's ramp (released default)
OPTIM = {"lr": 1.0e-5, "weight_decay": 0.02}  # the released fine-tuning values
DEFAULT_PEAK_TFLOPS_CUDA = 790.0  # measured bf16 dense matmul peak of an H100 (issue text)


@dataclass
class BenchSettings:
    """What to measure; one field per command-line option."""

    model_config: str
    device: str
    batch_size: int = 64
    image_res: int | None = None  # training resolution; None: the model config's
    eval_image_res: int | None = None  # evaluation resolution; None: the training resolution
    text_len: int = 25
    steps: int = 20
    warmup: int = 5
    eval_warmup: int = 2  # evaluation batches run before the clock starts
    eval_cases: int = 256
    eval_batch: int = 64  # fast path: phrases per GradCAM batch
    reference_eval_batch: int = 8  # the released grounding_eval's batch
    phrases_per_image: int = 8
    equivalence_cases: int = 64
    paths: tuple[str, ...] = ("fast", "reference")
    measure: tuple[str, ...] = MEASUREMENTS
    precision: str = "auto"  # the fast path's: auto = bf16 on CUDA, fp32 on CPU
    tf32: bool = False  # TF32 matmuls on the ``reference`` path
    compile: bool = False
    peak_tflops: float | None = None
    seed: int = 0


def resolve_config_path(path: str) -> Path:
    candidate = Path(path)
    if candidate.is_file() or candidate.is_absolute():
        return candidate
    in_repo = REPO / path
    return in_repo if in_repo.is_file() else candidate


def canonical_command(settings: BenchSettings) -> str:
    """An ``amc bench`` command that repeats this measurement, every setting spelled out."""
    parts = ["amc", "bench"]
    for name, value in dataclasses.asdict(settings).items():
        option = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            parts += [option] if value else []
        elif isinstance(value, list | tuple):
            parts += [option, ",".join(value)]
        elif value is not None:
            parts += [option, str(value)]
    return " ".join(shlex.quote(part) for part in parts)
