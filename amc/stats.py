"""Statistics that let a table say whether a difference is real.

Pointing accuracy is a mean of 0/1 hits, so its uncertainty comes from two
sources: which cases happen to be in the test split, and (when a method is
trained several times) which seed it was trained with. :func:`bootstrap_ci`
resamples both. Two methods evaluated on the same cases are compared with a
paired test (:func:`paired_bootstrap`, :func:`mcnemar`), which is far more
sensitive than comparing two independent intervals.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Interval:
    """A mean with its two-sided confidence interval."""

    mean: float
    low: float
    high: float
    level: float
    n_cases: int
    n_seeds: int


@dataclass(frozen=True)
class PairedComparison:
    """Accuracy of A minus accuracy of B on the same cases."""

    diff: float
    low: float
    high: float
    p_value: float
    level: float
    n_cases: int


@dataclass(frozen=True)
class McNemarResult:
    statistic: float
    p_value: float
    b: int  # A hit, B missed
    c: int  # A missed, B hit


def _as_seed_matrix(hits) -> np.ndarray:
    array = np.asarray(hits, dtype=float)
    if array.ndim == 1:
        array = array[None, :]
    if array.ndim != 2 or array.shape[1] == 0:
        raise ValueError(
            f"hits must be [cases] or [seeds, cases] with at least one case, got shape {array.shape}"
        )
    return array


def _bootstrap_replicates(matrix: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """Means of ``n_boot`` resamples of a ``[seeds, cases]`` matrix: cases with replacement and,
    with several rows, seeds with replacement too (the same drawn cases for every drawn seed)."""
    n_seeds, n_cases = matrix.shape
    replicates = np.empty(n_boot)
    # Chunked so that memory stays bounded on large splits.
    chunk = max(1, min(n_boot, 2_000_000 // max(n_cases, 1)))
    for start in range(0, n_boot, chunk):
        size = min(chunk, n_boot - start)
        case_index = rng.integers(0, n_cases, size=(size, n_cases))
        if n_seeds == 1:
            replicates[start : start + size] = matrix[0][case_index].mean(axis=1)
        else:
            seed_index = rng.integers(0, n_seeds, size=(size, n_seeds))
            # mean over drawn seeds of the per-seed accuracy on the drawn cases
            per_seed = np.stack(
                [matrix[seed_index[:, s]][np.arange(size)[:, None], case_index] for s in range(n_seeds)]
            )
            replicates[start : start + size] = per_seed.mean(axis=(0, 2))
    return replicates


def _percentile_interval(replicates: np.ndarray, level: float) -> tuple[float, float]:
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(replicates, [alpha, 1.0 - alpha])
    return float(low), float(high)


def bootstrap_ci(hits, *, n_boot: int = 10000, level: float = 0.95, seed: int = 0) -> Interval:
    """Percentile bootstrap interval of the mean accuracy.

    ``hits`` is ``[cases]`` (one run) or ``[seeds, cases]`` (several training
    seeds evaluated on the same cases). With several seeds each replicate draws
    seeds with replacement and then cases with replacement (the same cases for
    every drawn seed, since the seeds were evaluated on the same split), so the
    interval covers both sources of variation.
    """
    matrix = _as_seed_matrix(hits)
    replicates = _bootstrap_replicates(matrix, n_boot, np.random.default_rng(seed))
    low, high = _percentile_interval(replicates, level)
    return Interval(float(matrix.mean()), low, high, level, matrix.shape[1], matrix.shape[0])


def paired_bootstrap(
    hits_a, hits_b, *, n_boot: int = 10000, level: float = 0.95, seed: int = 0
) -> PairedComparison:
    """Paired bootstrap of accuracy(A) - accuracy(B) over the same cases.

    Both inputs are ``[cases]`` or ``[seeds, cases]`` aligned on the same cases
    (seeds are averaged first: the pairing is over cases). The p-value is the
    two-sided bootstrap p-value of a zero difference (twice the smaller tail,
    with the usual +1 correction so it is never exactly 0).
    """
    a = _as_seed_matrix(hits_a).mean(axis=0)
    b = _as_seed_matrix(hits_b).mean(axis=0)
    if a.shape != b.shape:
        raise ValueError(f"paired comparison needs the same cases: {a.shape[0]} vs {b.shape[0]}")
    diff_per_case = a - b
    replicates = _bootstrap_replicates(diff_per_case[None, :], n_boot, np.random.default_rng(seed))
    low, high = _percentile_interval(replicates, level)
    tail = min((replicates <= 0).sum(), (replicates >= 0).sum())
    p_value = min(1.0, 2.0 * (tail + 1) / (n_boot + 1))
    if np.all(diff_per_case == 0):
        p_value = 1.0
    return PairedComparison(float(diff_per_case.mean()), low, high, float(p_value), level, len(diff_per_case))


def mcnemar(hits_a, hits_b) -> McNemarResult:
    """McNemar's test on paired binary outcomes (one run each).

    Exact two-sided binomial test on the discordant pairs when there are fewer
    than 25 of them, the chi-square with continuity correction otherwise.
    """
    a = np.asarray(hits_a, dtype=bool)
    b = np.asarray(hits_b, dtype=bool)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"mcnemar needs two 1-D arrays over the same cases, got {a.shape} and {b.shape}")
    only_a = int(np.sum(a & ~b))
    only_b = int(np.sum(~a & b))
    discordant = only_a + only_b
    if discordant == 0:
        return McNemarResult(0.0, 1.0, only_a, only_b)
    if discordant < 25:
        k = min(only_a, only_b)
        tail = sum(math.comb(discordant, i) for i in range(k + 1)) / 2.0**discordant
        return McNemarResult(float(k), min(1.0, 2.0 * tail), only_a, only_b)
    statistic = (abs(only_a - only_b) - 1.0) ** 2 / discordant
    p_value = math.erfc(math.sqrt(statistic / 2.0))  # survival function of chi-square with 1 dof
    return McNemarResult(float(statistic), float(p_value), only_a, only_b)
