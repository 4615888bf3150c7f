"""The equivalence checks: the fast and the reference path give the same training losses and GradCAM maps."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import Tensor

from amc.bench.data import make_eval_cases, make_train_batch
from amc.bench.measure import free_memory
from amc.bench.paths import (
    PathSpec,
    build_model,
    build_path_optimizer,
    build_step,
    eval_batches,
    path_numerics,
    run_eval_batch,
    train_step,
)
from amc.bench.settings import BenchSettings

log = logging.getLogger(__name__)


# Relative tolerance on each training loss, by the fast path's precision.
LOSS_RTOL = {"fp32": 1e-4, "bf16": 2e-2}
LOSS_ATOL = {"fp32": 1e-6, "bf16": 1e-3}  # for terms that are (nearly) zero
MIN_CORRELATION = 0.99
MIN_SAME_POINTS = 0.99


@dataclass
class LossComparison:
    step: int  # 1: from the same weights; 2: after one optimiser step and momentum update
    term: str
    fast: float
    reference: float
    abs_diff: float
    rel_diff: float
    passed: bool


@dataclass
class TrainEquivalence:
    precision: str
    rtol: float
    atol: float
    comparisons: list[LossComparison]
    max_rel_diff: float
    passed: bool


@dataclass
class EvalEquivalence:
    cases: int
    image_res: int
    min_correlation: float
    mean_correlation: float
    same_point_fraction: float
    max_abs_diff: float
    passed: bool


def check_train_equivalence(
    fast: PathSpec,
    reference: PathSpec,
    config,
    state_dict: dict[str, Tensor],
    settings: BenchSettings,
    device: torch.device,
) -> TrainEquivalence:
    """Two AMC training steps of each path from the same weights and batch, dropout off.

    Step 1 compares the forward passes (attention kernels, precision); step 2 also compares the
    optimisers and the momentum updates. Same generator seeds: the same hard negatives and masks.
    """
    log.info("equivalence: training losses, fast vs %s", reference.name)
    batch = make_train_batch(config, settings.batch_size, settings.text_len, settings.seed + 2, device)
    losses: dict[str, list[dict[str, float]]] = {}
    for spec in (fast, reference):
        with path_numerics(spec, device):
            model = build_model(config, spec, state_dict, device).eval()  # eval(): dropout off
            step = build_step(model, "amc")
            optimizer = build_path_optimizer(model, spec, device)
            losses[spec.name] = []
            for index in range(2):
                loss, logs = train_step(step, optimizer, batch, spec, device, settings.seed + 100 + index)
                losses[spec.name].append({"loss": float(loss.detach()), **logs})
        del model, step, optimizer
        free_memory(device)
    rtol, atol = LOSS_RTOL[fast.precision], LOSS_ATOL[fast.precision]
    comparisons = []
    for index, (a, b) in enumerate(zip(losses[fast.name], losses[reference.name], strict=True)):
        for term in b:
            diff = abs(a[term] - b[term])
            rel = diff / max(abs(b[term]), 1e-12)
            comparisons.append(
                LossComparison(
                    step=index + 1,
                    term=term,
                    fast=a[term],
                    reference=b[term],
                    abs_diff=diff,
                    rel_diff=rel,
                    passed=diff <= rtol * abs(b[term]) + atol,
                )
            )
    return TrainEquivalence(
        precision=fast.precision,
        rtol=rtol,
        atol=atol,
        comparisons=comparisons,
        max_rel_diff=max((c.rel_diff for c in comparisons if abs(c.reference) > atol), default=0.0),
        passed=all(c.passed for c in comparisons),
    )


def pearson(a: Tensor, b: Tensor) -> Tensor:
    """Pearson correlation per row of two [n, d] tensors; a constant row scores 1 if the rows are equal."""
    a, b = a.double(), b.double()
    identical = (a - b).abs().amax(dim=1) == 0
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    denominator = a.norm(dim=1) * b.norm(dim=1)
    corr = (a * b).sum(dim=1) / denominator.clamp_min(1e-300)
    return torch.where(denominator == 0, identical.double(), corr)


def check_eval_equivalence(
    fast: PathSpec,
    reference: PathSpec,
    config,
    state_dict: dict[str, Tensor],
    settings: BenchSettings,
    device: torch.device,
) -> EvalEquivalence:
    """GradCAM maps of both recipes on the same cases: correlation per case and the same point."""
    from amc.metrics import pointing_point

    log.info("equivalence: GradCAM maps, fast vs %s", reference.name)
    cases = make_eval_cases(
        config,
        settings.equivalence_cases,
        settings.phrases_per_image,
        settings.text_len,
        settings.seed + 3,
        device,
    )
    maps: dict[str, Tensor] = {}
    for spec in (fast, reference):
        with path_numerics(spec, device):
            model = build_model(config, spec, state_dict, device).eval()
            maps[spec.name] = torch.cat(
                [run_eval_batch(model, cases, part, spec, device) for part in eval_batches(cases, spec)]
            )
        del model
        free_memory(device)
    a, b = maps[fast.name], maps[reference.name]
    corr = pearson(a.flatten(1), b.flatten(1))
    same = [
        pointing_point(x, h, w) == pointing_point(y, h, w)
        for x, y, (h, w) in zip(a, b, cases.original_sizes, strict=True)
    ]
    same_fraction = sum(same) / len(same)
    return EvalEquivalence(
        cases=len(cases),
        image_res=config.image_res,
        min_correlation=float(corr.min()),
        mean_correlation=float(corr.mean()),
        same_point_fraction=same_fraction,
        max_abs_diff=float((a - b).abs().max()),
        passed=bool(corr.min() > MIN_CORRELATION) and same_fraction >= MIN_SAME_POINTS,
    )
