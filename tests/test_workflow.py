"""The Snakemake workflow: the full grid in a dry run, clear schema errors, and (slow) the mini run end to end."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml

from amc import grid
from amc.report import stages
from amc.result_format import RESULT_FORMAT, read_result
from tests.browser import open_page
from tests.helpers import REPO, job_counts, planned_outputs, snakemake
from tests.system_tools import require_tool

# The Snakefile's targets: they only gather inputs, no job of theirs runs a command.
TARGET_RULES = {"all", "released", "all_results", "released_results"}


def job_benchmarks(output: str) -> dict[str, list[str | None]]:
    """rule -> the benchmark file of each of its jobs (None: no benchmark line) in a (non-quiet) dry run."""
    found: dict[str, list[str | None]] = {}
    for block in re.split(r"^(?=(?:local)?rule \S+:$)", output, flags=re.MULTILINE)[1:]:
        rule = re.match(r"(?:local)?rule (\S+):", block).group(1)
        match = re.search(r"^\s+benchmark: (.*)$", block.split("\n\n", 1)[0], flags=re.MULTILINE)
        found.setdefault(rule, []).append(match.group(1).strip() if match else None)
    return found


@pytest.fixture(scope="module")
def paper_dry_run() -> str:
    """`snakemake -n --forceall --printshellcmds all` on config/config.yaml: every job of the paper
    grid with its command, whatever this checkout holds (one Snakemake start for the tests below)."""
    result = snakemake("-n", "--forceall", "--printshellcmds", "all")
    return result.stdout + result.stderr


@pytest.fixture(scope="module")
def demo_dry_run() -> str:
    """The same for config/demo.yaml (--forceall: not depending on a demo already run here)."""
    return snakemake("-n", "--forceall", "--printshellcmds", "all", "--configfile", "config/demo.yaml").stdout


@pytest.mark.subprocess
def test_paper_grid_is_complete_without_data(paper_dry_run):
    counts = job_counts(paper_dry_run)
    methods_finetuned = (
        6 + 4
    )  # albef_vg, vmrm_style, amc, L_mean only, L_max only, per-sample + 4 sweep points
    assert counts["train"] == methods_finetuned * 3
    # + ALBEF and the released checkpoints once each; each job evaluates 5 splits
    assert counts["evaluate"] == methods_finetuned * 3 + 2
    assert counts["prepare_eval"] == 5 and counts["prepare_vg"] == 1
    assert counts["download_albef_14m"] == 1 and counts["download_flickr30k_images"] == 1
    assert counts["download_amc_best_flickr"] == 1 and counts["download_amc_best_refcoco"] == 1
    assert "download_amc_best_refclef" not in counts  # RefCLEF is not a benchmark of the suite
    for rule in ("table1", "ablation", "figures", "qualitative", "run_config", "all"):
        assert counts[rule] == 1
    assert "pretrain" not in counts and "synth" not in counts


@pytest.mark.subprocess
def test_paper_grid_names(paper_dry_run):
    outputs = planned_outputs(paper_dry_run)
    run = "results/reproduction"
    for method in (
        "albef_vg", "vmrm_style", "amc", "amc_lmean_only", "amc_lmax_only", "amc_per_sample",
        "amc_dmean0.05", "amc_dmean0.2", "amc_dmax0.25", "amc_dmax1.0",
    ):  # fmt: skip
        for seed in (0, 1, 2):
            assert f"{run}/checkpoints/{method}/seed{seed}/checkpoint_final.pt" in outputs
            # select_best: the best epoch per benchmark on its val split, as the released models
            for benchmark in ("flickr30k", "refcoco+"):
                assert f"{run}/checkpoints/{method}/seed{seed}/checkpoint_best_{benchmark}.pt" in outputs
            assert f"{run}/train/{method}/seed{seed}/metrics.jsonl" in outputs
            for split in (
                "flickr30k-val",
                "flickr30k-test",
                "refcoco+-val",
                "refcoco+-testA",
                "refcoco+-testB",
            ):
                assert f"{run}/eval/{method}/seed{seed}/{split}.json" in outputs
    # the base values of the sweeps are AMC itself, not duplicate runs
    assert not any("amc_dmean0.1/" in o or "amc_dmax0.5/" in o for o in outputs)
    assert f"{run}/eval/albef/seed0/refcoco+-testB.json" in outputs
    assert not any(o.startswith(f"{run}/eval/albef/seed1") for o in outputs)
    assert f"{run}/eval/amc_released/seed0/flickr30k-test.json" in outputs
    assert not any(o.startswith(f"{run}/eval/amc_released/seed1") for o in outputs)
    assert not any("checkpoints/amc_released" in o or "train/amc_released" in o for o in outputs)
    assert "data/raw/albef/ALBEF.pth" in outputs and "data/records/vg-train.jsonl" in outputs
    for name in ("table1.csv", "table1.md", "table1.tex", "ablation.csv", "ablation.md", "ablation.tex"):
        assert f"{run}/tables/{name}" in outputs
    for name in ("qualitative", "ablation_delta", "training_curves", "error_decomposition"):
        assert f"{run}/figures/{name}.png" in outputs and f"{run}/figures/{name}.pdf" in outputs
    assert f"{run}/report.html" in outputs  # `all` ends with the HTML report


@pytest.mark.subprocess
def test_every_job_writes_a_benchmark_file(paper_dry_run):
    """Every rule but the targets has a benchmark: directive, at results/<run>/benchmarks/<rule>[/<wildcards>].tsv."""
    released = snakemake("-n", "--forceall", "released").stdout
    jobs = job_benchmarks(paper_dry_run)
    for rule, paths in job_benchmarks(released).items():
        jobs.setdefault(rule, []).extend(paths)
    assert {"table1_released", "html_report", "download_albef_14m", "train", "evaluate"} <= set(jobs)
    for rule, paths in jobs.items():
        if rule in TARGET_RULES:
            continue
        for path in paths:
            assert path is not None, f"rule {rule} has no benchmark: directive"
            assert re.fullmatch(rf"results/reproduction/benchmarks/{re.escape(rule)}(/[^ ]+)?\.tsv", path), (
                path
            )
    train = sorted(jobs["train"])
    assert "results/reproduction/benchmarks/train/amc/seed0.tsv" in train and len(set(train)) == len(train)


@pytest.mark.subprocess
def test_the_html_report_rule_runs_snakemake_report_on_the_same_configuration(paper_dry_run):
    text = paper_dry_run
    command = next(line for line in text.splitlines() if "--report" in line)
    assert (
        "amc report config --json" in command
        and "--out results/reproduction/logs/report/report-html.config.json" in command
    )
    assert "-m snakemake --snakefile" in command and f"{REPO / 'Snakefile'}" in command
    assert "--configfile results/reproduction/logs/report/report-html.config.json --nolock" in command
    assert command.rstrip().endswith(
        "--report results/reproduction/report.html all_results >> results/reproduction/logs/report/report-html.log 2>&1"
    )


@pytest.mark.subprocess
def test_paper_runs_select_the_best_epoch_per_benchmark(paper_dry_run):
    text = paper_dry_run
    train = next(line for line in text.splitlines() if "amc train" in line and "method.name=amc " in line)
    assert '"name": "flickr30k", "records": "data/records/flickr30k-val.jsonl", "image_res": 256' in train
    assert '"name": "refcoco+", "records": "data/records/refcoco+-val.jsonl", "image_res": 384' in train
    evaluate = next(
        line
        for line in text.splitlines()
        if "amc evaluate" in line and "/amc/seed0/" in line and "--explainer" not in line
    )
    folder = "results/reproduction/checkpoints/amc/seed0"
    checkpoints = evaluate.split("--checkpoint ", 1)[1].split(" --", 1)[0].split()
    assert (
        checkpoints
        == [f"{folder}/checkpoint_best_flickr30k.pt"] * 2 + [f"{folder}/checkpoint_best_refcoco+.pt"] * 3
    )
    assert "--split val test val testA testB" in evaluate
    assert "--resize auto auto auto auto auto" in evaluate  # each benchmark's own, as released
    # The released checkpoints: best_flickr.pth on Flickr30k, best_refcoco.pth on RefCOCO+.
    released = next(line for line in text.splitlines() if "amc evaluate" in line and "/amc_released/" in line)
    checkpoints = released.split("--checkpoint ", 1)[1].split(" --", 1)[0].split()
    assert checkpoints == ["data/raw/amc/best_flickr.pth"] * 2 + ["data/raw/amc/best_refcoco.pth"] * 3


@pytest.mark.subprocess
def test_a_benchmark_resize_reaches_evaluation_and_selection(tmp_path):
    from amc import grid

    config = yaml.safe_load((REPO / "config/ci.yaml").read_text())
    config["benchmarks"]["flickr30k"]["resize"] = "pil-bicubic"
    (tmp_path / "ci-resize.yaml").write_text(yaml.safe_dump(config))
    text = snakemake("-n", "--printshellcmds", "--configfile", str(tmp_path / "ci-resize.yaml")).stdout
    assert re.search(
        r"amc evaluate .*--benchmark flickr30k refcoco\+ refcoco\+ .*--resize pil-bicubic auto auto", text
    )
    config["benchmarks"]["flickr30k"]["resize"] = "bilinear"
    (tmp_path / "ci-bad.yaml").write_text(yaml.safe_dump(config))
    result = snakemake("-n", "--configfile", str(tmp_path / "ci-bad.yaml"), check=False)
    assert result.returncode != 0 and "bilinear" in result.stdout + result.stderr
    selection = {
        "finetune": {"select_best": True},
        "data": {"records_dir": "r"},
        "benchmarks": {
            "flickr30k": {"splits": ["val"], "image_res": 256, "resize": "pil-bicubic"},
            "refcoco+": {"splits": ["val"], "image_res": 384},
        },
    }
    assert grid.selection_splits(selection) == [
        {"name": "flickr30k", "records": "r/flickr30k-val.jsonl", "image_res": 256, "resize": "pil-bicubic"},
        {"name": "refcoco+", "records": "r/refcoco+-val.jsonl", "image_res": 384},
    ]


@pytest.mark.subprocess
def test_released_target_downloads_and_evaluates_only():
    """`snakemake released -n` on config/config.yaml: downloads, records, two evaluations, a table; no training."""
    text = snakemake("-n", "--forceall", "--printshellcmds", "released").stdout
    counts = job_counts(text)
    downloads = {rule.removeprefix("download_") for rule in counts if rule.startswith("download_")}
    assert downloads == {
        "albef_14m", "amc_best_flickr", "amc_best_refcoco", "coco_train2014", "refcoco_plus",
        "flickr30k_entities_annotations", "flickr30k_entities_train", "flickr30k_entities_val",
        "flickr30k_entities_test", "flickr30k_images", "bert_vocab",
    }  # fmt: skip
    assert counts["prepare_eval"] == 5 and counts["evaluate"] == 2
    assert counts["table1_released"] == 1 and counts["run_config"] == 1 and counts["released"] == 1
    assert counts["html_report"] == 1  # results/reproduction/released.html
    assert set(counts) - {f"download_{d}" for d in downloads} == {
        "prepare_eval",
        "evaluate",
        "table1_released",
        "run_config",
        "html_report",
        "released",
    }  # no train, prepare_vg, pretrain, table1, ablation, figures
    outputs = planned_outputs(text)
    run = "results/reproduction"
    for method in ("albef", "amc_released"):
        assert f"{run}/eval/{method}/seed0/refcoco+-testA.json" in outputs
    assert f"{run}/released.html" in outputs and f"{run}/report.html" not in outputs
    for ext in ("csv", "md", "tex"):
        assert f"{run}/tables/table1_released.{ext}" in outputs
        assert f"{run}/tables/table1.{ext}" not in outputs  # all's Table 1 is not touched
    assert "--methods albef amc_released --name table1_released" in text


@pytest.mark.subprocess
def test_demo_grid(demo_dry_run):
    demo = job_counts(demo_dry_run)
    assert demo["synth"] == 1 and demo["pretrain"] == 1
    assert demo["train"] == 12 and demo["evaluate"] == 14  # one job per checkpoint, 4 splits each
    # the released-checkpoint path on the demo's own AMC: export, copy in (amc download), evaluate
    assert demo["export_checkpoint"] == 1 and demo["download_amc_demo_released"] == 1


@pytest.mark.subprocess
def test_demo_released_path_commands(demo_dry_run):
    text = demo_dry_run
    assert (
        "amc export-checkpoint results/demo/checkpoints/amc/seed0/checkpoint_final.pt "
        "results/demo/exports/amc_seed0.pth --layout amc-released" in text
    )
    assert (
        "amc download amc_demo_released --dest data/demo/synth "
        "--manifest amc/resources/synthetic-manifest.yaml --no-progress --update-lock" in text
    )
    evaluate = next(line for line in text.splitlines() if "amc evaluate" in line and "/amc_released/" in line)
    assert (
        evaluate.split("--checkpoint ", 1)[1].split(" --", 1)[0].split()
        == ["data/demo/synth/amc/best_demo.pth"] * 4
    )


@pytest.mark.subprocess
def test_ci_grid_and_gpu_commands(tmp_path):
    """config/ci.yaml alone (not merged into config/config.yaml); GPU rules go through amc gpu-run."""
    config = yaml.safe_load((REPO / "config/ci.yaml").read_text())
    config["finetune"]["gpus"] = 2
    (tmp_path / "ci2.yaml").write_text(yaml.safe_dump(config))
    result = snakemake("-n", "--printshellcmds", "--configfile", str(tmp_path / "ci2.yaml"))
    text = result.stdout
    counts = job_counts(text)
    assert counts["train"] == 1 and counts["evaluate"] == 3  # ALBEF, AMC, AMC as released; 3 splits each
    assert "amc gpu-run --gpus 2 -- torchrun --standalone --nproc-per-node 2 -m amc train" in text
    assert "--resume" in text and "method.objectives.amc.delta_mean=0.1" in text
    assert re.search(r"amc gpu-run --gpus 1 -- amc evaluate .*--image-res 96", text)
    # torch in the qualitative figure keeps to the rule's threads too (jobs run side by side)
    assert re.search(
        r"OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 amc gpu-run --gpus \d -- amc report qualitative", text
    )
    assert "gpu=2" in text


@pytest.mark.subprocess
def test_schema_error_is_clear_in_snakemake():
    result = snakemake("-n", "--configfile", "config/ci.yaml", "--config", "seedz=[0]", check=False)
    assert result.returncode != 0
    out = result.stderr + result.stdout
    assert "Invalid workflow configuration" in out
    assert "Additional properties are not allowed ('seedz' was unexpected)" in out


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda c: c.update(seeds=3), "config.seeds: 3 is not of type 'array'"),
        (
            lambda c: c["data"].update(scal="demo"),
            "config.data: Additional properties are not allowed ('scal'",
        ),
        (lambda c: c.update(run="paper"), "config.run"),
        (lambda c: c["methods"]["amc"].update(kind="fine"), "config.methods.amc.kind: 'fine' is not one of"),
        (lambda c: c["evaluate"].update(gpus=-1), "config.evaluate.gpus: -1 is less than the minimum of 0"),
    ],
)
def test_schema_errors_name_the_key(change, message):
    config = yaml.safe_load((REPO / "config/ci.yaml").read_text())
    change(config)
    with pytest.raises(grid.GridError) as error:
        grid.validate_config(config)
    assert message in str(error.value)


def test_cross_field_errors():
    config = grid.resolve_paths(grid.validate_config(yaml.safe_load((REPO / "config/ci.yaml").read_text())))
    config["table1"]["rows"][0]["method"] = "nope"
    with pytest.raises(grid.GridError, match="table1.rows: method 'nope' is not in methods"):
        grid.check_grid(config)


def _paper_config() -> dict:
    return grid.resolve_paths(grid.validate_config(yaml.safe_load((REPO / "config/config.yaml").read_text())))


def test_released_kind_needs_a_checkpoint_per_benchmark():
    config = _paper_config()
    grid.check_grid(config)
    assert grid.expand_methods(config)["amc_released"]["seeds"] == [0]  # evaluated once, never trained
    assert grid.checkpoint_path(config, "amc_released", 0, "refcoco+") == "data/raw/amc/best_refcoco.pth"
    del config["methods"]["amc_released"]["checkpoints"]["refcoco+"]
    with pytest.raises(grid.GridError, match=r"methods.amc_released.checkpoints: .* none for refcoco\+"):
        grid.check_grid(config)

    config = _paper_config()
    config["methods"]["amc_released"]["objectives"] = {"amc": {}}
    with pytest.raises(grid.GridError, match="kind released is not trained"):
        grid.check_grid(config)
    config = _paper_config()
    config["methods"]["albef"]["checkpoints"] = {"flickr30k": "x.pth"}
    with pytest.raises(grid.GridError, match="only a method of kind released takes checkpoints"):
        grid.check_grid(config)
    config = _paper_config()
    config["exports"] = {"x": {"method": "amc_released", "layout": "albef"}}
    with pytest.raises(grid.GridError, match="exports.x.method"):
        grid.check_grid(config)


def test_all_configs_validate():
    for name in ("config.yaml", "demo.yaml", "ci.yaml"):
        config = grid.validate_config(yaml.safe_load((REPO / "config" / name).read_text()))
        grid.check_grid(grid.resolve_paths(config))


# ------------------------------------------------------------------ the mini run, end to end


@pytest.fixture(scope="module")
def ci_run(tmp_path_factory) -> Path:
    """config/ci.yaml run by `snakemake all` in a scratch folder (its results/ci/ is the tests' to read)."""
    root = tmp_path_factory.mktemp("ci-run")
    for name in ("config", "results/paper", "amc/resources"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).symlink_to(REPO / name)
    snakemake("all", "--cores", "2", "--resources", "gpu=0", *ci_args(root), cwd=root, timeout=1100)
    return root


def ci_args(root: Path) -> tuple[str, ...]:
    return ("--configfile", "config/ci.yaml", "--directory", str(root))


@pytest.mark.subprocess
@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_ci_config_end_to_end(ci_run):
    """config/ci.yaml: every stage, the HTML report, then an interrupted-and-rerun check."""
    run = ci_run / "results/ci"
    for name in ("table1.csv", "table1.md", "table1.tex", "ablation.csv", "ablation.md", "ablation.tex"):
        assert (run / "tables" / name).stat().st_size > 0
    for name in ("qualitative", "ablation_delta", "training_curves", "error_decomposition"):
        assert (run / "figures" / f"{name}.png").is_file() and (run / "figures" / f"{name}.pdf").is_file()
    assert (run / "eval/albef/seed0/flickr30k-test.json").is_file()
    # Every result the run wrote is a valid result of this version (amc/resources/result.schema.json).
    results = sorted(run.glob("eval/*/seed*/*.json"))
    assert len(results) == 9 and all(read_result(path)["format"] == RESULT_FORMAT for path in results)
    # `snakemake all` wrote the HTML report itself (rule html_report).
    assert (run / "report.html").stat().st_size > 10_000
    # The released-checkpoint path: AMC exported in the released layout, copied in by amc download
    # (checksum locked), loaded through the released key map: the same model, so the same cases.
    lock = json.loads((ci_run / "data/ci/synth/checksums.lock.json").read_text())["artifacts"]
    assert (
        lock["amc_ci_released"]["sha256"]
        == hashlib.sha256((run / "exports/amc_seed0.pth").read_bytes()).hexdigest()
    )
    for split in ("flickr30k-test", "refcoco+-testA", "refcoco+-testB"):
        released = json.loads((run / f"eval/amc_released/seed0/{split}.json").read_text())["cases"]
        assert released == json.loads((run / f"eval/amc/seed0/{split}.json").read_text())["cases"]
    assert "AMC (released checkpoints)" in (run / "tables/table1.md").read_text()
    # The explainer ablation: every explainer of each checkpoint in its own file; GradCAM at the
    # model's layer is the main evaluation, case for case (the same pass).
    for method in ("albef", "amc"):
        for slug in ("gradcam-layer1", "attention-layer1", "gradcam-mean", "rollout", "gradcam-layer2"):
            assert (run / f"eval_explainers/{method}/seed0/flickr30k-test-{slug}.json").is_file()
        explained = json.loads(
            (run / f"eval_explainers/{method}/seed0/flickr30k-test-gradcam-layer1.json").read_text()
        )
        assert (
            explained["cases"]
            == json.loads((run / f"eval/{method}/seed0/flickr30k-test.json").read_text())["cases"]
        )
    assert "| rollout | AMC | flickr30k test |" in (run / "tables/explainers.md").read_text()
    assert (run / "figures/explainer_layers.png").is_file() and (
        run / "figures/explainer_layers.pdf"
    ).is_file()
    # Every job of the run wrote its benchmark file (seconds, memory), which `amc report stages` reads.
    planned = job_counts(
        snakemake("-n", "--forceall", "--quiet", "rules", *ci_args(ci_run), cwd=ci_run).stdout
    )
    written = Counter(job.rule for job in stages.read_jobs(run))
    assert written == {rule: n for rule, n in planned.items() if rule not in TARGET_RULES}
    assert all(job.seconds > 0 for job in stages.read_jobs(run))
    table = subprocess.run(
        [sys.executable, "-m", "amc", "report", "stages", "--run", str(run)],
        cwd=REPO, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    for stage in ("data", "pretrain", "train", "evaluate", "reports", "total"):
        assert re.search(rf"^\| {stage} \| \d+ \|", table, flags=re.MULTILINE), table
    # Rerun after losing one result: only that evaluation and the reports that read it.
    lost = run / "eval/amc/seed0/refcoco+-testA.json"
    kept = lost.read_bytes()
    lost.unlink()
    try:
        counts = job_counts(snakemake("-n", "--quiet", "rules", *ci_args(ci_run), cwd=ci_run).stdout)
    finally:
        lost.write_bytes(kept)  # the run stays whole for the other tests of this module
    assert counts["evaluate"] == 1 and counts.get("train", 0) == 0 and counts.get("pretrain", 0) == 0
    assert "explainer_layers.png" in (run / "report.html").read_text(errors="replace")
    assert counts["html_report"] == 1


OFFLINE_TEMPLATE = """{%- extends "lab/index.html.j2" -%}
{%- block html_head_js -%}{%- endblock html_head_js -%}
{%- block html_head_js_mathjax -%}{%- endblock html_head_js_mathjax -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
"""


def notebook_html(run: Path, cwd: Path, out: Path) -> Path:
    """notebooks/analysis.ipynb executed on ``run`` and exported to HTML (nbconvert's lab template
    without its CDN scripts, require.js, MathJax and mermaid, which the notebook does not use)."""
    import nbformat
    from nbclient import NotebookClient
    from nbconvert import HTMLExporter

    notebook = nbformat.read(REPO / "notebooks/analysis.ipynb", as_version=4)
    notebook.cells[1].source = notebook.cells[1].source.replace('RUN = "results/demo"', f'RUN = "{run}"')
    NotebookClient(
        notebook, timeout=240, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}
    ).execute()
    template = out.with_suffix(".html.j2")
    template.write_text(OFFLINE_TEMPLATE)
    body, _ = HTMLExporter(template_file=str(template)).from_notebook_node(notebook)
    out.write_text(body, encoding="utf-8")
    return out


@pytest.mark.subprocess
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_html_report_and_notebook_render_in_chromium(ci_run):
    """The ci run's report.html and the notebook's HTML export in headless Chromium: every figure
    loads, nothing is logged as an error. Screenshots stay beside them (under the pytest tmp dir)."""
    pytest.importorskip("websocket", reason="websocket-client (the dev extra) speaks the DevTools protocol")
    pytest.importorskip("nbconvert", reason="nbconvert exports the notebook")
    chromium = require_tool("chromium", "chromium")
    run = ci_run / "results/ci"
    report = open_page(chromium, run / "report.html", run / "screenshots/report.png", embedded=True)
    assert report.errors == []
    embedded = {image["src"].rsplit("filename=", 1)[-1]: image["width"] for image in report.images}
    figures = ("ablation_delta", "training_curves", "error_decomposition", "qualitative", "explainer_layers")
    assert all(embedded.get(f"{name}.png", 0) > 0 for name in figures), embedded
    assert all(image["width"] > 0 for image in report.images)
    assert "The AMC benchmark workflow (run ci)" in report.text

    page = notebook_html(run, ci_run, run / "analysis.html")
    notebook = open_page(chromium, page, run / "screenshots/notebook.png")
    assert notebook.errors == []
    # Table 1's plot, the forest plot, 3 per-category heatmaps (plt.show), the error decomposition,
    # the training curves, the workflow's qualitative figure (display(Image)) and the explainer
    # ablation's accuracy against the fusion layer; no sweep in ci
    assert len(notebook.images) == 9 and all(image["width"] > 0 for image in notebook.images)
    assert "Table 1 against the paper" in notebook.text
    for shot in (report.screenshot, notebook.screenshot):
        assert shot.stat().st_size > 10_000
        print(f"screenshot: {shot}")
