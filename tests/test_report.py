"""Report tables and figures from evaluation results fabricated in the documented format.

The fabricated run has numbers one can check by hand: on Flickr30k test (10 cases)
AMC hits 8 (seed 0) and 6 (seed 1) cases -> 70%, ALBEF hits 5 -> 50%, and so on.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from amc import grid
from amc.cli import main as amc_main
from amc.io import DataError
from amc.report import figures, tables
from tests.helpers import REPO, fabricate_run, run_config
from tests.system_tools import require_tool


def test_the_result_paths_have_one_owner_and_parse_back():
    """amc.grid writes every result path of a run (the workflow's outputs, the reports' inputs);
    the evaluation path parses back to what it was made from, and the reports' glob finds it."""
    config = {"run": "fab", "data": {"records_dir": "data/fab/records"}}
    path = grid.eval_path(config, "amc_dmean0.05", 2, "refcoco+", "testA")
    assert path == "results/fab/eval/amc_dmean0.05/seed2/refcoco+-testA.json"
    assert grid.parse_eval_path(path) == grid.EvalKey("amc_dmean0.05", 2, "refcoco+", "testA")
    assert Path(path).match(grid.EVAL_GLOB) and grid.EVAL_GLOB == "eval/*/seed*/*-*.json"
    with pytest.raises(DataError, match="not under eval/<method>/seed<k>/"):
        grid.parse_eval_path("results/fab/eval/amc/latest/flickr30k-test.json")
    assert (
        grid.final_checkpoint_path(config, "amc", 1)
        == "results/fab/checkpoints/amc/seed1/checkpoint_final.pt"
    )
    assert (
        grid.best_checkpoint_path(config, "amc", 1, "flickr30k")
        == "results/fab/checkpoints/amc/seed1/checkpoint_best_flickr30k.pt"
    )
    assert grid.train_metrics_path(config, "amc", 1) == "results/fab/train/amc/seed1/metrics.jsonl"
    assert grid.TRAIN_METRICS_GLOB == "train/*/seed*/metrics.jsonl"
    assert grid.records_path(config, "flickr30k", "test") == "data/fab/records/flickr30k-test.jsonl"
    assert grid.table_paths(grid.run_dir(config), "table1") == [
        Path("results/fab/tables/table1.csv"),
        Path("results/fab/tables/table1.md"),
        Path("results/fab/tables/table1.tex"),
    ]
    # the Snakemake rules pass wildcards for the parts
    assert grid.eval_path(config, "{method}", "{seed}", "flickr30k", "test") == (
        "results/fab/eval/{method}/seed{seed}/flickr30k-test.json"
    )


def report(*args: str) -> int:
    return amc_main(["report", *args])


@pytest.fixture()
def fabricated(tmp_path):
    return fabricate_run(tmp_path)


def test_grid_expansion_skips_the_base_value():
    config = grid.resolve_paths(grid.validate_config(run_config(REPO / "results/paper/table1.csv")))
    methods = grid.expand_methods(config)
    assert list(methods) == ["albef", "vmrm_style", "amc", "amc_released", "amc_dmean0.05"]
    assert methods["albef"]["seeds"] == [0]  # kind none: one seed-independent evaluation
    assert methods["amc_released"]["seeds"] == [0]  # kind released too
    assert (
        grid.checkpoint_path(config, "amc_released", 0, "flickr30k") == "data/fab/synth/amc/best_flickr.pth"
    )
    assert methods["amc_dmean0.05"]["objectives"]["amc"] == {"delta_mean": 0.05, "delta_max": 0.5}
    assert methods["amc_dmean0.05"]["label"] == "AMC, Δ1 = 0.05"
    axes = grid.sweep_axes(config)
    assert [(p["value"], p["method"]) for p in axes[0]["points"]] == [(0.05, "amc_dmean0.05"), (0.1, "amc")]
    overrides = grid.train_overrides(config, "amc_dmean0.05", 0)
    assert "method.objectives.amc.delta_mean=0.05" in overrides
    assert "method.name=amc_dmean0.05" in overrides and "seed=0" in overrides
    assert grid.override_value("0.1") == '"0.1"' and grid.override_value("true") == '"true"'


def test_table1_numbers(fabricated):
    run_dir, config = fabricated
    results = tables.load_all(run_dir)
    frame = tables.table1_frame(results, config, n_boot=2000)
    amc = frame[(frame["method"] == "amc") & (frame["benchmark"] == "flickr30k")].iloc[0]
    assert amc["reproduced"] == pytest.approx(70.0)  # (8 + 6) / 20
    assert amc["paper"] == pytest.approx(86.49)
    assert amc["difference"] == pytest.approx(70.0 - 86.49)
    assert amc["n_seeds"] == 2 and amc["n_cases"] == 10
    assert amc["low"] <= amc["reproduced"] <= amc["high"]
    assert "CVPR 2023" in amc["source"]
    albef = frame[(frame["method"] == "albef") & (frame["benchmark"] == "flickr30k")].iloc[0]
    assert albef["reproduced"] == pytest.approx(50.0) and albef["n_seeds"] == 1
    vmrm = frame[(frame["method"] == "vmrm_style") & (frame["split"] == "testA")].iloc[0]
    assert vmrm["reproduced"] == pytest.approx(100 * 5 / 16)
    released = frame[(frame["method"] == "amc_released") & (frame["benchmark"] == "flickr30k")].iloc[0]
    assert released["row"] == "AMC (released checkpoints)" and released["paper"] == pytest.approx(86.49)
    assert released["reproduced"] == pytest.approx(90.0) and released["n_seeds"] == 1


def test_table1_files(fabricated):
    run_dir, _ = fabricated
    assert report("table1", "--run", str(run_dir), "--n-boot", "500") == 0
    csv = pd.read_csv(run_dir / "tables/table1.csv")
    assert list(dict.fromkeys(csv["row"])) == [
        "VMRM-style",
        "ALBEF",
        "AMC (fine-tuned here)",
        "AMC (released checkpoints)",
    ]
    md = (run_dir / "tables/table1.md").read_text()
    assert "| AMC (fine-tuned here) | 86.49 | 70.00 [" in md
    assert "| AMC (released checkpoints) | 86.49 | 90.00 [" in md
    assert "Yang et al., Improving Visual Grounding" in md
    assert r"\begin{tabular}" in (run_dir / "tables/table1.tex").read_text()


def test_ablation_paired_and_errors(fabricated):
    run_dir, config = fabricated
    frame = tables.ablation_frame(tables.load_all(run_dir), config, n_boot=2000)
    row = frame[(frame["method"] == "albef") & (frame["benchmark"] == "flickr30k")].iloc[0]
    assert row["accuracy"] == pytest.approx(50.0)
    assert row["diff_vs_reference"] == pytest.approx(50.0 - 70.0)
    assert row["diff_low"] <= row["diff_vs_reference"] <= row["diff_high"]
    assert 0.0 < row["p_bootstrap"] <= 1.0
    # McNemar against AMC seed 0: ALBEF hits cases 0-4, AMC 0-7 -> b = 0, c = 3, exact p = 0.25
    assert (row["mcnemar_b"], row["mcnemar_c"]) == (0, 3)
    assert row["mcnemar_p"] == pytest.approx(0.25)
    # misses of ALBEF: cases 5-9 -> odd ids background (5, 7, 9), even other object (6, 8)
    assert row["miss_other_object"] == 2 and row["miss_background"] == 3
    assert row["miss_other_object_share"] == pytest.approx(0.4)
    reference = frame[(frame["method"] == "amc") & (frame["benchmark"] == "flickr30k")].iloc[0]
    assert math.isnan(reference["diff_vs_reference"])
    assert set(frame["method"]) == {"albef", "vmrm_style", "amc", "amc_released", "amc_dmean0.05"}
    # A released method has one seed-independent run, paired (McNemar) with AMC's first seed:
    # released hits cases 0-8, AMC seed 0 hits 0-7 -> b = 1, c = 0.
    released = frame[(frame["method"] == "amc_released") & (frame["benchmark"] == "flickr30k")].iloc[0]
    assert (released["kind"], released["n_seeds"], released["mcnemar_seed"]) == ("released", 1, 0)
    assert (released["mcnemar_b"], released["mcnemar_c"]) == (1, 0)


def test_released_table_has_only_the_untrained_rows(fabricated):
    run_dir, _ = fabricated
    args = ["table1", "--run", str(run_dir), "--n-boot", "200", "--methods", "albef", "amc_released"]
    assert report(*args, "--name", "table1_released") == 0
    csv = pd.read_csv(run_dir / "tables/table1_released.csv")
    assert list(dict.fromkeys(csv["row"])) == ["ALBEF", "AMC (released checkpoints)"]
    assert (
        "| AMC (released checkpoints) | 86.49 | 90.00 ["
        in (run_dir / "tables/table1_released.md").read_text()
    )
    assert r"\label{tab:table1-released}" in (run_dir / "tables/table1_released.tex").read_text()
    assert not (run_dir / "tables/table1.csv").exists()  # all's Table 1 is another file
    assert report("table1", "--run", str(run_dir), "--methods", "nope") == 2
    assert report("table1", "--run", str(run_dir), "--name", "../escape") == 2


def test_ablation_and_figure_files(fabricated):
    run_dir, _ = fabricated
    assert report("ablation", "--run", str(run_dir), "--n-boot", "500") == 0
    assert "Misses: background" in (run_dir / "tables/ablation.md").read_text()
    assert report("figures", "--run", str(run_dir), "--n-boot", "200") == 0
    for name in ("ablation_delta", "training_curves", "error_decomposition"):
        for ext in ("png", "pdf"):
            assert (run_dir / "figures" / f"{name}.{ext}").stat().st_size > 1000


def test_tex_escape_writes_ascii_latex():
    assert tables.tex_escape("Δ = reproduced − paper, p <0.001, 95% CI, run `demo_1` & ±1 (é)") == (
        r"$\Delta$ = reproduced $-$ paper, p $<$0.001, 95\% CI, run \texttt{demo\_1} \& $\pm$1 (e)"
    )
    assert (
        tables.tex_escape("a_b {x} #1 ~ ^ \\")
        == r"a\_b \{x\} \#1 \textasciitilde{} \textasciicircum{} \textbackslash{}"
    )
    assert tables.latex_table(["[x]"], [["[95% CI]"]], "c", "tab:x").count(r"{}[") == 2
    row = tables.latex_table(["m"], [["VMRM-style", "-2.38 [-3.00, +1.00]"]], "c", "tab:x").splitlines()[7]
    assert row == r"VMRM-style & $-$2.38 [$-$3.00, +1.00] \\"


@pytest.mark.subprocess
def test_latex_tables_compile_with_pdflatex(fabricated, tmp_path):
    """table1.tex, table1_released.tex and ablation.tex compile with pdflatex alone (texlive-latex-base)."""
    pdflatex = require_tool("pdflatex", "texlive-latex-base")
    run_dir, _ = fabricated
    assert report("table1", "--run", str(run_dir), "--n-boot", "200") == 0
    released = ["--methods", "albef", "amc_released", "--name", "table1_released"]
    assert report("table1", "--run", str(run_dir), "--n-boot", "200", *released) == 0
    assert report("ablation", "--run", str(run_dir), "--n-boot", "200") == 0
    for stem in ("table1", "table1_released", "ablation"):
        table = run_dir / "tables" / f"{stem}.tex"
        text = table.read_text()
        assert text.isascii(), stem
        assert r"$\Delta$" in text and "%)" not in text.replace(r"\%)", "")  # every % escaped
        document = tmp_path / f"{stem}-document.tex"
        document.write_text(
            "\\documentclass{article}\n\\begin{document}\n\\input{"
            + table.as_posix()
            + "}\n\\end{document}\n"
        )
        result = subprocess.run(
            [pdflatex, "-interaction=nonstopmode", "-halt-on-error", "-output-directory", str(tmp_path), str(document)],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        log = (tmp_path / f"{stem}-document.log").read_text(errors="replace")
        assert result.returncode == 0, f"{stem}.tex does not compile:\n{result.stdout[-2000:]}"
        assert "Missing character" not in log and (tmp_path / f"{stem}-document.pdf").stat().st_size > 1000
    assert r"reproduced $-$ paper" in (run_dir / "tables/table1.tex").read_text()


def test_reports_refuse_results_that_do_not_validate(fabricated, caplog):
    run_dir, _ = fabricated
    path = run_dir / "eval/amc/seed1/flickr30k-test.json"
    good = json.loads(path.read_text())
    bad = json.loads(path.read_text())
    bad["cases"][8]["miss"] = None  # case 8 is a miss: it must say where its point fell
    path.write_text(json.dumps(bad))
    assert report("table1", "--run", str(run_dir), "--n-boot", "100") == 2
    assert f"{path}: not an amc evaluate result: data.cases[8].miss must be one of" in caplog.text
    older = {key: value for key, value in good.items() if key != "format"}  # written before the format field
    path.write_text(json.dumps(older))
    with pytest.raises(Exception, match=r"result format None, this version reads 'amc-bench-result/1'"):
        tables.load_all(run_dir)
    path.write_text(json.dumps(good))
    assert report("table1", "--run", str(run_dir), "--n-boot", "100") == 0


def test_misaligned_cases_are_an_error(fabricated):
    run_dir, config = fabricated
    path = run_dir / "eval/amc/seed1/flickr30k-test.json"
    data = json.loads(path.read_text())
    data["cases"][0]["id"] = "other"
    path.write_text(json.dumps(data))
    with pytest.raises(Exception, match="missing"):
        tables.table1_frame(tables.load_all(run_dir), config, n_boot=100)


def test_qualitative_choice_and_grid(fabricated, tmp_path):
    run_dir, _ = fabricated
    results = tables.load_all(run_dir)
    runs = {m: results[(m, "flickr30k", "test")][0] for m in ("albef", "amc")}
    ids = figures.choose_examples(runs, 3, prefer="amc")
    assert ids == figures.choose_examples(runs, 3, prefer="amc")  # deterministic
    assert set(ids) <= {"flickr30k/test/5", "flickr30k/test/6", "flickr30k/test/7"}  # AMC hits, ALBEF misses
    from PIL import Image

    image = tmp_path / "img.png"
    Image.new("RGB", (64, 48), (120, 30, 200)).save(image)
    example = {
        "image": str(image),
        "phrase": "a purple square",
        "boxes": [[5, 5, 30, 30]],
        "heatmaps": {"albef": np.random.default_rng(0).random((6, 8)), "amc": None},
        "points": {"albef": ((40.0, 10.0), False), "amc": ((10.0, 10.0), True)},
    }
    paths = figures.qualitative_grid([example], [("albef", "ALBEF"), ("amc", "AMC")], tmp_path / "q")
    assert all(p.stat().st_size > 1000 for p in paths)


def test_where_prints_what_exists_and_what_is_not_made_yet(tmp_path, monkeypatch, capsys):
    from amc.report import where

    monkeypatch.chdir(tmp_path)
    (tmp_path / "cfg.yaml").write_text("run: fab\n")
    fabricate_run(tmp_path)  # evaluations only: no table, figure or report yet
    assert where.main(["--config", "cfg.yaml"]) == 0
    out = capsys.readouterr().out
    assert "Table 1:   results/fab/tables/table1.md  (not made yet)" in out
    assert "Ablations: results/fab/tables/ablation.md  (not made yet)" in out
    assert (
        "Report:    results/fab/report.html  (not made yet: snakemake all --configfile cfg.yaml writes it)"
        in out
    )
    assert "table1_released" not in out and ".png" not in out

    tables = tmp_path / "results/fab/tables"
    tables.mkdir(parents=True)
    (tables / "table1.md").write_text("| AMC (fine-tuned here) | 86.49 |\n")
    (tables / "ablation.md").write_text("| amc |\n")
    (tmp_path / "results/fab/figures").mkdir()
    (tmp_path / "results/fab/figures/ablation_delta.png").write_bytes(b"")
    (tmp_path / "results/fab/report.html").write_text("<html></html>")
    assert where.main(["--config", "cfg.yaml"]) == 0
    out = capsys.readouterr().out
    assert "Table 1:   results/fab/tables/table1.md  (also .csv, .tex)" in out
    assert "| AMC (fine-tuned here) | 86.49 |" in out and "not made yet" not in out
    assert "results/fab/figures/ablation_delta.png  (+ .pdf)" in out
    assert "Report:    results/fab/report.html\n" in out

    released = tables / "table1_released.md"
    released.write_text("| ALBEF | 79.14 |\n")
    assert where.main(["--config", "cfg.yaml"]) == 0
    out = capsys.readouterr().out
    assert "snakemake released): results/fab/tables/table1_released.md" in out
    assert "| ALBEF | 79.14 |" not in out  # Table 1 exists: the released rows are in it
    (tables / "table1.md").unlink()
    assert where.main(["--config", "cfg.yaml"]) == 0
    out = capsys.readouterr().out
    assert "snakemake released): results/fab/tables/table1_released.md" in out and "| ALBEF | 79.14 |" in out


def test_each_report_reads_only_the_results_it_shows(fabricated, caplog):
    """Table 1 reads its rows' and columns' results (the workflow rule's inputs), no other file; the
    ablation reads every result. A broken result of a method Table 1 does not show stops only the ablation."""
    run_dir, _ = fabricated
    path = run_dir / "eval/amc_dmean0.05/seed0/flickr30k-test.json"
    path.write_text("{not json")
    assert report("table1", "--run", str(run_dir), "--n-boot", "100") == 0
    assert report("ablation", "--run", str(run_dir), "--n-boot", "100") == 2
    assert str(path) in caplog.text
    found = tables.find_evals(run_dir, methods=["amc"], splits=[("refcoco+", "testA")])
    assert [p.relative_to(run_dir).as_posix() for p in found] == [
        "eval/amc/seed0/refcoco+-testA.json",
        "eval/amc/seed1/refcoco+-testA.json",
    ]


@pytest.mark.subprocess
def test_config_validation_leaves_out_jsonschemas_iri_parsers():
    """Validating a configuration (every Snakemake run of the workflow does) imports jsonschema without
    its optional rfc3987_syntax, whose import builds ~40 parsers; the module stays importable after."""
    pytest.importorskip("rfc3987_syntax", reason="the slow optional module is not installed here")
    code = (
        "import sys, yaml\n"
        "from amc import grid\n"
        "config = yaml.safe_load(open('config/demo.yaml'))\n"
        "grid.validate_config(config)\n"
        "assert 'rfc3987_syntax' not in sys.modules and 'lark' not in sys.modules, 'imported'\n"
        "config['data']['scal'] = 1\n"
        "try:\n"
        "    grid.validate_config(config)\n"
        "    raise SystemExit('not refused')\n"
        "except grid.GridError as error:\n"
        "    print(error)\n"
        "import rfc3987_syntax\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "config.data: Additional properties are not allowed ('scal' was unexpected)" in result.stdout
