"""The explainer table and figure (amc report explainers) from results fabricated in the documented
format, with numbers checked by hand; the result paths of amc.grid."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import yaml

from amc import grid
from amc.cli import main as amc_main
from amc.report import tables
from tests.helpers import REPO, fabricate_explainer_results


def explainer_config() -> dict:
    config = yaml.safe_load((REPO / "config/ci.yaml").read_text())
    config["methods"]["albef_vg"] = {"label": "ALBEF + VG", "kind": "finetune", "seeds": [0]}
    config["seeds"] = [0, 1]
    config["model_config"] = str(REPO / "config/models/tiny.yaml")
    config["explainers"] = {
        "enabled": True,
        "methods": ["albef_vg", "amc"],
        "splits": [{"benchmark": "flickr30k", "split": "test"}],
        "explainers": ["gradcam", "rollout"],
        "reference": "albef_vg",
    }
    return grid.resolved_config(grid.validate_config(config))


@pytest.fixture()
def run(tmp_path):
    config = explainer_config()
    run_dir = tmp_path / "results" / config["run"]
    run_dir.mkdir(parents=True)
    (run_dir / "workflow-config.json").write_text(json.dumps(config))
    fabricate_explainer_results(run_dir, config)
    return run_dir, config


def test_paths_round_trip_and_the_explainer_list():
    config = explainer_config()
    path = grid.explainer_eval_path(config, "amc_dmean0.05", 2, "refcoco+", "testA", "gradcam-mean")
    assert path == "results/ci/eval_explainers/amc_dmean0.05/seed2/refcoco+-testA-gradcam-mean.json"
    assert grid.parse_explainer_eval_path(path) == ("amc_dmean0.05", 2, "refcoco+", "testA", "gradcam-mean")
    # gradcam (the model's layer 1) and GradCAM at every fusion layer: 1 is listed once
    assert [e["slug"] for e in config["explainer_list"]] == ["gradcam-layer1", "rollout", "gradcam-layer2"]
    targets = grid.explainer_targets(config)
    assert len(targets) == (1 + 2) * 1 * 3  # albef_vg seed 0, amc seeds 0 and 1; one split; 3 explainers
    assert {t["method"] for t in targets} == {"albef_vg", "amc"}


def test_explainer_numbers(run):
    run_dir, config = run
    frame = tables.explainer_frame(tables.load_explainer_evals(run_dir), config, n_boot=2000)
    assert list(dict.fromkeys(frame["explainer"])) == ["gradcam-layer1", "rollout", "gradcam-layer2"]
    row = frame[(frame["explainer"] == "gradcam-layer1") & (frame["method"] == "amc")].iloc[0]
    assert row["n_seeds"] == 2 and row["n_cases"] == 4
    assert row["accuracy"] == pytest.approx(62.5)  # (2 + 3) / 8
    assert row["energy"] == pytest.approx(40.0)  # (1.6 + 1.6) / 8
    # paired with ALBEF + VG (25% and (0.5 + 0.1 + 0 + 0.3) / 4 = 22.5%): per case averaged over seeds
    assert row["accuracy_diff"] == pytest.approx(37.5) and row["energy_diff"] == pytest.approx(17.5)
    assert row["accuracy_diff_low"] <= row["accuracy_diff"] <= row["accuracy_diff_high"]
    assert 0 < row["accuracy_p"] <= 1 and row["energy_undefined"] == 0
    reference = frame[(frame["explainer"] == "gradcam-layer1") & (frame["method"] == "albef_vg")].iloc[0]
    assert reference["energy"] == pytest.approx(22.5) and reference["energy_undefined"] == 1
    assert math.isnan(reference["accuracy_diff"]) and reference["layer"] == 1
    # at layer 2 AMC's gain is gone: the peak moved only where AMC was trained
    layer2 = frame[(frame["explainer"] == "gradcam-layer2") & (frame["method"] == "amc")].iloc[0]
    assert layer2["accuracy"] == pytest.approx(25.0) and layer2["accuracy_diff"] == pytest.approx(-25.0)
    assert layer2["energy_diff"] == pytest.approx(0.0) and layer2["energy_p"] == 1.0
    rollout = frame[(frame["explainer"] == "rollout") & (frame["method"] == "amc")].iloc[0]
    assert rollout["accuracy"] == pytest.approx(25.0) and math.isnan(rollout["layer"])


def test_report_explainers_writes_the_table_and_the_layer_figure(run):
    run_dir, _ = run
    assert amc_main(["report", "explainers", "--run", str(run_dir), "--n-boot", "300"]) == 0
    csv = pd.read_csv(run_dir / "tables/explainers.csv")
    assert len(csv) == 6 and {"accuracy", "energy", "energy_diff", "accuracy_p"} <= set(csv.columns)
    md = (run_dir / "tables/explainers.md").read_text()
    assert "| gradcam-layer1 | AMC | flickr30k test | 2 | 62.50 [" in md
    assert "Δ energy vs albef_vg" in md and "| 1 |" in md  # ALBEF + VG: one map without positive mass
    assert r"\label{tab:explainers}" in (run_dir / "tables/explainers.tex").read_text()
    for ext in ("png", "pdf"):
        assert (run_dir / f"figures/explainer_layers.{ext}").stat().st_size > 1000


def test_no_explainer_results_is_an_error(tmp_path, run):
    run_dir, _ = run
    empty = tmp_path / "results" / "empty"
    empty.mkdir(parents=True)
    (empty / "workflow-config.json").write_text((run_dir / "workflow-config.json").read_text())
    assert amc_main(["report", "explainers", "--run", str(empty)]) == 2


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda e: e.update(methods=["albef", "nope"]),
            "explainers.methods: method 'nope' is not in methods",
        ),
        (lambda e: e.update(reference="amc_released"), "explainers.reference: 'amc_released' is not among"),
        (
            lambda e: e.update(layers=[0, 1]),
            "explainers: explainer gradcam:layer=0: layer 0 is not a fusion layer",
        ),
        (lambda e: e.update(explainers=["attention:layer=3"]), "layer 3 is not a fusion layer"),
        (
            lambda e: e.update(splits=[{"benchmark": "refcoco+", "split": "val"}]),
            r"explainers.splits: refcoco\+ val is not among the evaluated",
        ),
    ],
)
def test_bad_explainer_configuration_is_a_clear_error(change, message):
    config = yaml.safe_load((REPO / "config/ci.yaml").read_text())
    config["model_config"] = str(REPO / "config/models/tiny.yaml")
    change(config["explainers"])
    with pytest.raises(grid.GridError, match=message):
        grid.check_grid(grid.resolve_paths(grid.validate_config(config)))


def test_where_names_the_explainer_table(tmp_path, monkeypatch, capsys):
    from amc.report import where

    monkeypatch.chdir(tmp_path)
    (tmp_path / "cfg.yaml").write_text("run: fab\n")
    assert where.main(["--config", "cfg.yaml"]) == 0
    assert "Explainers" not in capsys.readouterr().out  # not made: not named
    (tmp_path / "results/fab/tables").mkdir(parents=True)
    (tmp_path / "results/fab/tables/explainers.md").write_text("x\n")
    assert where.main(["--config", "cfg.yaml"]) == 0
    assert "Explainers: results/fab/tables/explainers.md" in capsys.readouterr().out
