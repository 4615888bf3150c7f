"""One owner for the AMC objective's defaults: the constants of ``amc/losses.py``.

The objective and the trainer's defaults read them; the workflow configurations must repeat
them (a sweep's base value is read from the method's entry), so these tests check each copy.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from amc.losses import DELTA_MAX, DELTA_MEAN, PER_SAMPLE_MEAN, WEIGHT_MAX, WEIGHT_MEAN
from amc.objectives import AttentionMapConsistency
from amc.run_config import DEFAULTS

REPO = Path(__file__).resolve().parent.parent
RELEASED = {
    "delta_mean": DELTA_MEAN,
    "delta_max": DELTA_MAX,
    "weight_mean": WEIGHT_MEAN,
    "weight_max": WEIGHT_MAX,
    "per_sample_mean": PER_SAMPLE_MEAN,
}
# What each ablation of the workflow configurations changes, on purpose (its name says so).
DEPARTURES = {
    "amc": {},
    "amc_lmean_only": {"weight_max": 0.0},
    "amc_lmax_only": {"weight_mean": 0.0},
    "amc_per_sample": {"per_sample_mean": True},
}


def test_the_objective_and_the_trainer_default_to_the_released_values():
    assert AttentionMapConsistency().params == RELEASED
    trainer = DEFAULTS["method"]["objectives"]["amc"]
    assert trainer == {key: RELEASED[key] for key in trainer}
    assert set(trainer) == set(RELEASED) - {"per_sample_mean"}  # the loss's own default covers it


@pytest.mark.parametrize("config_file", ["config.yaml", "demo.yaml", "ci.yaml"])
def test_workflow_configurations_repeat_the_released_values_but_for_each_ablation(config_file):
    methods = yaml.safe_load((REPO / "config" / config_file).read_text())["methods"]
    with_amc = {
        name: spec["objectives"]["amc"]
        for name, spec in methods.items()
        if "amc" in spec.get("objectives", {})
    }
    assert "amc" in with_amc
    for name, params in with_amc.items():
        assert name in DEPARTURES, f"{config_file}: {name} is not a known AMC method"
        assert params == {**RELEASED, **DEPARTURES[name]}, f"{config_file}: methods.{name}.objectives.amc"
