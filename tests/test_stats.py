"""amc.stats against cases with known answers."""

import numpy as np
import pytest

from amc.stats import bootstrap_ci, mcnemar, paired_bootstrap


def test_interval_brackets_the_mean_and_narrows_with_more_cases():
    rng = np.random.default_rng(1)
    small = rng.random(100) < 0.7
    large = rng.random(10000) < 0.7
    ci_small = bootstrap_ci(small, n_boot=2000)
    ci_large = bootstrap_ci(large, n_boot=2000)
    assert ci_small.low < ci_small.mean < ci_small.high
    assert (ci_large.high - ci_large.low) < (ci_small.high - ci_small.low) / 5
    # normal approximation of the binomial: half-width ~ 1.96 * sqrt(p(1-p)/n)
    half = 1.96 * np.sqrt(0.7 * 0.3 / 10000)
    assert (ci_large.high - ci_large.low) / 2 == pytest.approx(half, rel=0.15)


def test_interval_covers_the_truth_about_95_percent_of_the_time():
    rng = np.random.default_rng(7)
    truth, covered, trials = 0.6, 0, 200
    for trial in range(trials):
        hits = rng.random(300) < truth
        ci = bootstrap_ci(hits, n_boot=1000, seed=trial)
        covered += ci.low <= truth <= ci.high
    assert 0.89 <= covered / trials <= 0.99


def test_seed_variation_widens_the_interval():
    rng = np.random.default_rng(3)
    # three seeds whose accuracies differ a lot, on the same 2000 cases
    hits = np.stack([rng.random(2000) < p for p in (0.5, 0.6, 0.7)])
    over_cases_only = bootstrap_ci(hits[1], n_boot=2000)
    over_seeds = bootstrap_ci(hits, n_boot=2000)
    assert over_seeds.n_seeds == 3 and over_seeds.n_cases == 2000
    assert over_seeds.mean == pytest.approx(hits.mean())
    assert (over_seeds.high - over_seeds.low) > 2 * (over_cases_only.high - over_cases_only.low)


def test_paired_bootstrap_detects_a_real_difference_and_not_a_null_one():
    rng = np.random.default_rng(5)
    base = rng.random(2000) < 0.6
    better = base.copy()
    flip = rng.choice(np.flatnonzero(~base), size=100, replace=False)  # 100 misses become hits
    better[flip] = True
    result = paired_bootstrap(better, base, n_boot=2000)
    assert result.diff == pytest.approx(100 / 2000)
    assert result.low > 0 and result.p_value < 0.01
    same = paired_bootstrap(base, base, n_boot=500)
    assert same.diff == 0 and same.p_value == 1.0
    # a shuffled copy with the same accuracy: no significant difference most of the time
    null = paired_bootstrap(base, rng.permutation(base), n_boot=2000)
    assert null.low <= 0 <= null.high


def test_paired_bootstrap_requires_the_same_cases():
    with pytest.raises(ValueError, match="same cases"):
        paired_bootstrap(np.ones(10), np.ones(11))


def test_mcnemar_exact_and_asymptotic():
    a = np.array([1] * 10 + [0] * 0 + [1] * 5, dtype=bool)
    b = np.array([0] * 10 + [1] * 5, dtype=bool)
    exact = mcnemar(a, b)
    assert (exact.b, exact.c) == (10, 0)
    assert exact.p_value == pytest.approx(2 / 2**10)
    # 60 vs 20 discordant pairs: chi2 = (40-1)^2/80 = 19.0125, p ~ 1.3e-5
    a = np.array([1] * 60 + [0] * 20 + [1] * 100, dtype=bool)
    b = np.array([0] * 60 + [1] * 20 + [1] * 100, dtype=bool)
    result = mcnemar(a, b)
    assert result.statistic == pytest.approx(19.0125)
    assert result.p_value == pytest.approx(1.3e-5, rel=0.1)
    assert mcnemar(a, a).p_value == 1.0
