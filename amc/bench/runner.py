"""The whole ``amc bench`` run: equivalence checks, then the training steps, then the evaluation, for every path."""

from __future__ import annotations

import dataclasses
import datetime
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from amc.bench.data import make_eval_cases
from amc.bench.equivalence import (
    EvalEquivalence,
    TrainEquivalence,
    check_eval_equivalence,
    check_train_equivalence,
)
from amc.bench.measure import (
    EvalMeasurement,
    TrainMeasurement,
    free_memory,
    measure_eval,
    measure_pointing,
    measure_training,
)
from amc.bench.paths import PathSpec, path_spec
from amc.bench.settings import (
    DEFAULT_PEAK_TFLOPS_CUDA,
    MEASUREMENTS,
    PATHS,
    REFERENCE_PATHS,
    BenchSettings,
    canonical_command,
    resolve_config_path,
)
from amc.io import AmcError

log = logging.getLogger(__name__)


@dataclass
class BenchReport:
    meta: dict[str, Any]
    settings: dict[str, Any]
    paths: list[PathSpec]
    train: list[TrainMeasurement] = field(default_factory=list)
    eval: list[EvalMeasurement] = field(default_factory=list)
    amc_overhead: dict[str, float] = field(default_factory=dict)  # path -> AMC step time / ALBEF step time
    speedups: dict[str, dict[str, float]] = field(default_factory=dict)  # reference path -> what -> ratio
    pointing_cases_per_s: float | None = None
    train_equivalence: TrainEquivalence | None = None
    eval_equivalence: EvalEquivalence | None = None

    @property
    def equivalence_passed(self) -> bool:
        checks = [c for c in (self.train_equivalence, self.eval_equivalence) if c is not None]
        return all(c.passed for c in checks)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["equivalence_passed"] = self.equivalence_passed
        return data


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def initial_weights(config, seed: int, device: torch.device) -> dict[str, Tensor]:
    """Random weights (the model's own initialisation, seeded), made on ``device``, kept on the host.

    The paths' models load a copy each, so every path starts from exactly these weights.
    """
    from amc.models.albef import ALBEF

    torch.manual_seed(seed)
    with torch.device(device):
        model = ALBEF(config)
    state = {name: tensor.detach().cpu().clone() for name, tensor in model.state_dict().items()}
    del model
    free_memory(device)
    return state


def _check_settings(settings: BenchSettings, train_config, config_path: Path) -> torch.device:
    device = torch.device(settings.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise AmcError("--device cuda: no CUDA device is available")
    for name in settings.paths:
        if name not in PATHS:
            raise AmcError(f"unknown path {name!r}; paths: {', '.join(PATHS)}")
    for name in settings.measure:
        if name not in MEASUREMENTS:
            raise AmcError(f"unknown measurement {name!r}; one of {', '.join(MEASUREMENTS)}")
    if settings.batch_size < 2:
        raise AmcError("--batch-size must be at least 2 (ITM draws in-batch hard negatives)")
    if train_config.queue_size < settings.batch_size:
        raise AmcError(f"{config_path}: queue_size {train_config.queue_size} is smaller than the batch")
    if train_config.text.max_position_embeddings < settings.text_len:
        raise AmcError(f"--text-len {settings.text_len} exceeds max_position_embeddings of {config_path}")
    return device


def _meta(settings: BenchSettings, config, device: torch.device, command: str, peak: float | None) -> dict:
    from amc.models.albef import ALBEF

    with torch.device("meta"):  # only to count the parameters: no memory
        counted = ALBEF(config)
    return {
        "card": device_name(device),
        "device": str(device),
        "torch": torch.__version__,
        "cuda": torch.version.cuda if device.type == "cuda" else None,
        "command": command,
        "equivalent_command": canonical_command(settings),
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "model_config": str(settings.model_config),
        "parameters": counted.num_parameters(),
        "trainable_parameters": counted.num_parameters(trainable_only=True),
        "gradcam_layer": config.gradcam_layer,
        "cpu_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "load_average_start": _load_average(),
        "peak_tflops": peak,
    }


def run_bench(settings: BenchSettings, command: str = "") -> BenchReport:
    """Equivalence checks, then the training steps, then the evaluation, for every path."""
    from amc.models.config import ModelConfig

    config_path = resolve_config_path(settings.model_config)
    base = ModelConfig.from_file(config_path)
    train_config = base.replace(image_res=settings.image_res or base.image_res)
    eval_config = base.replace(image_res=settings.eval_image_res or train_config.image_res)
    device = _check_settings(settings, train_config, config_path)
    peak = settings.peak_tflops
    if peak is None and device.type == "cuda":
        peak = DEFAULT_PEAK_TFLOPS_CUDA
    specs = [path_spec(name, settings, device) for name in settings.paths]
    report = BenchReport(
        meta=_meta(settings, train_config, device, command, peak),
        settings=dataclasses.asdict(settings),
        paths=specs,
    )
    log.info("amc bench on %s (%s), torch %s", report.meta["card"], device, torch.__version__)
    train_state = initial_weights(train_config, settings.seed, device)
    eval_state = (
        initial_weights(eval_config, settings.seed, device)
        if {"eval", "equivalence"} & set(settings.measure)
        else None
    )

    if "equivalence" in settings.measure:
        # Always against the strict fp32 reference (TF32 off), the fast path uncompiled.
        fast = dataclasses.replace(path_spec("fast", settings, device), compile=False)
        reference = path_spec("reference", dataclasses.replace(settings, tf32=False), device)
        report.train_equivalence = check_train_equivalence(
            fast, reference, train_config, train_state, settings, device
        )
        report.eval_equivalence = check_eval_equivalence(
            fast, reference, eval_config, eval_state, settings, device
        )

    if "train" in settings.measure:
        for spec in specs:
            for objectives_name in ("amc", "albef"):
                report.train.append(
                    measure_training(spec, objectives_name, train_config, train_state, settings, device, peak)
                )
            amc, albef = report.train[-2:]
            report.amc_overhead[spec.name] = amc.ms_per_step / albef.ms_per_step
    del train_state
    free_memory(device)

    if "eval" in settings.measure:
        cases = make_eval_cases(
            eval_config,
            settings.eval_cases,
            settings.phrases_per_image,
            settings.text_len,
            settings.seed + 4,
            device,
        )
        for spec in specs:
            measurement, maps = measure_eval(spec, eval_config, eval_state, cases, settings, device, peak)
            report.eval.append(measurement)
            if spec.name == "fast" and maps:
                flat = torch.cat(maps)  # the measured cases: the last len(flat) of them
                sizes = cases.original_sizes[len(cases) - len(flat) :]
                report.pointing_cases_per_s = measure_pointing(flat, sizes)

    if "fast" in settings.paths:
        for name in settings.paths:
            if name in REFERENCE_PATHS:
                report.speedups[name] = _speedups(report, "fast", name)
    report.meta["load_average_end"] = _load_average()
    return report


def _speedups(report: BenchReport, fast: str, reference: str) -> dict[str, float]:
    ratios = {}
    train = {(m.path, m.objectives): m for m in report.train}
    for objectives_name in ("amc", "albef"):
        if (fast, objectives_name) in train and (reference, objectives_name) in train:
            a, b = train[(fast, objectives_name)], train[(reference, objectives_name)]
            ratios[f"train_{objectives_name}_throughput"] = a.pairs_per_s / b.pairs_per_s
            ratios[f"train_{objectives_name}_memory"] = _memory_of(a) / max(_memory_of(b), 1e-9)
    evals = {m.path: m for m in report.eval}
    if fast in evals and reference in evals:
        ratios["eval_throughput"] = evals[fast].cases_per_s / evals[reference].cases_per_s
    return ratios


def _memory_of(m: TrainMeasurement | EvalMeasurement) -> float:
    """The memory figure compared between paths: the tensor estimate on the CPU, the CUDA peak otherwise."""
    return m.tensor_memory_mib if m.tensor_memory_mib is not None else m.peak_memory_mib


def _load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None
