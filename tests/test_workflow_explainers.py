"""The explainer ablation in the workflow: its jobs in the dry runs of the paper, demo and ci configs,
one job per checkpoint with every explainer and split, outputs apart from eval/, the `all` target."""

from __future__ import annotations

import re

import pytest
import yaml

from tests.helpers import REPO, SNAKEMAKE, job_counts, planned_outputs, snakemake

pytestmark = pytest.mark.skipif(SNAKEMAKE is None, reason="snakemake is not installed")

PAPER_SLUGS = ["gradcam-layer8", "attention-layer8", "gradcam-mean", "rollout"] + [
    f"gradcam-layer{k}" for k in (6, 7, 9, 10, 11)
]


@pytest.mark.subprocess
def test_paper_explainer_jobs_and_outputs():
    text = snakemake("-n", "--forceall", "--printshellcmds", "all").stdout
    counts = job_counts(text)
    # albef once, albef_vg, amc, L_mean only, L_max only with 3 seeds each
    assert counts["evaluate_explainers"] == 1 + 4 * 3 and counts["explainers"] == 1
    outputs = planned_outputs(text)
    run = "results/reproduction"
    for split in ("flickr30k-test", "refcoco+-testA", "refcoco+-testB"):
        for slug in PAPER_SLUGS:
            assert f"{run}/eval_explainers/amc_lmax_only/seed2/{split}-{slug}.json" in outputs
    assert not any("eval_explainers" in o and ("-val-" in o or "vmrm_style" in o) for o in outputs)
    for name in ("explainers.csv", "explainers.md", "explainers.tex"):
        assert f"{run}/tables/{name}" in outputs
    assert (
        f"{run}/figures/explainer_layers.png" in outputs and f"{run}/figures/explainer_layers.pdf" in outputs
    )
    command = next(line for line in text.splitlines() if "--explainer" in line and "/amc/seed1/" in line)
    flags = re.findall(r"--explainer (\S+)", command)
    assert flags == ["gradcam:layer=8", "attention:layer=8", "gradcam-mean", "rollout"] + [
        f"gradcam:layer={k}" for k in (6, 7, 9, 10, 11)
    ]
    assert "--split test testA testB" in command and "--image-res 256 384 384" in command
    outs = command.split("--out ", 1)[1].split(" >", 1)[0].split()
    assert outs == [
        f"'{run}/eval_explainers/amc/seed1/{split}-{{explainer}}.json'"
        for split in ("flickr30k-test", "refcoco+-testA", "refcoco+-testB")
    ]
    # each benchmark's selected checkpoint, as in the main evaluation
    checkpoints = command.split("--checkpoint ", 1)[1].split(" --", 1)[0].split()
    folder = f"{run}/checkpoints/amc/seed1"
    assert (
        checkpoints
        == [f"{folder}/checkpoint_best_flickr30k.pt"] + [f"{folder}/checkpoint_best_refcoco+.pt"] * 2
    )


@pytest.mark.subprocess
def test_demo_and_ci_explainer_jobs(tmp_path):
    args = ("-n", "--forceall", "--quiet", "rules")
    demo = job_counts(snakemake(*args, "--configfile", "config/demo.yaml").stdout)
    assert demo["evaluate_explainers"] == 6 and demo["explainers"] == 1  # amc has 2 seeds
    config = yaml.safe_load((REPO / "config/ci.yaml").read_text())
    config["evaluate"]["extra_args"] = ["--limit", "7"]  # reaches the explainer jobs as the evaluate jobs
    (tmp_path / "ci.yaml").write_text(yaml.safe_dump(config))
    text = snakemake("-n", "--forceall", "--printshellcmds", "--configfile", str(tmp_path / "ci.yaml")).stdout
    assert job_counts(text)["evaluate_explainers"] == 2
    command = next(line for line in text.splitlines() if "--explainer" in line and "--method amc " in line)
    assert re.findall(r"--explainer (\S+)", command) == [
        "gradcam:layer=1", "attention:layer=1", "gradcam-mean", "rollout", "gradcam:layer=2"
    ]  # fmt: skip
    assert "--records data/ci/records/flickr30k-test.jsonl --benchmark flickr30k --split test " in command
    assert " --limit 7 --out " in command


@pytest.mark.subprocess
def test_explainers_off_adds_nothing(tmp_path):
    config = yaml.safe_load((REPO / "config/ci.yaml").read_text())
    config["explainers"]["enabled"] = False
    (tmp_path / "ci-off.yaml").write_text(yaml.safe_dump(config))
    text = snakemake(
        "-n", "--forceall", "--printshellcmds", "--configfile", str(tmp_path / "ci-off.yaml")
    ).stdout
    counts = job_counts(text)
    assert "evaluate_explainers" not in counts and "explainers" not in counts and counts["evaluate"] == 3


@pytest.mark.subprocess
def test_a_bad_explainer_configuration_stops_the_workflow(tmp_path):
    config = yaml.safe_load((REPO / "config/ci.yaml").read_text())
    config["explainers"]["layers"] = [0]
    (tmp_path / "ci-bad.yaml").write_text(yaml.safe_dump(config))
    result = snakemake("-n", "--configfile", str(tmp_path / "ci-bad.yaml"), check=False)
    assert result.returncode != 0
    assert "layer 0 is not a fusion layer of this model" in result.stdout + result.stderr
