"""`amc report stages`: the per-stage table from Snakemake benchmark files fabricated by hand.

Each file is (rule path, seconds of each repetition, max_rss of each, end time); a job starts at its
end minus its seconds. By hand:

    data     synth 1000-1010, prepare_eval 1010-1015, download 1098-1100: 3 jobs, 17 s, span 100 s, RSS 100.5
    train    1170-1200 and 1170-1210: 2 jobs, 70 s, span 40 s, RSS 500
    evaluate two repetitions of 10 and 20 s (mean 15) ending 1300: 1 job, 15 s, span 15 s, RSS 350
    reports  html_report 1392-1400: 1 job, 8 s, RSS 200
    mystery  (no stage) 1400-1401: 1 job, 1 s, RSS NA
    total    8 jobs, 111 s, span 1000-1401 = 401 s, RSS 500
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from amc.cli import main as amc_main
from amc.io import DataError
from amc.report import stages
from tests.helpers import REPO

HEADER = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time"
JOBS = [
    ("synth.tsv", [10.0], ["100.5"], 1010),
    ("prepare_eval/flickr30k-test.tsv", [5.0], ["NA"], 1015),
    ("download_amc_demo_released.tsv", [2.0], ["50"], 1100),
    ("train/amc/seed0.tsv", [30.0], ["400"], 1200),
    ("train/amc/seed1.tsv", [40.0], ["500"], 1210),
    ("evaluate/amc/seed0.tsv", [10.0, 20.0], ["300", "350"], 1300),
    ("html_report/report.tsv", [8.0], ["200"], 1400),
    ("mystery.tsv", [1.0], ["NA"], 1401),
]


def write_benchmarks(run: Path) -> None:
    for relative, seconds, rss, end in JOBS:
        path = run / "benchmarks" / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        rows = [
            f"{s:.2f}\t0:00:{int(s):02d}\t{r}\t1\t1\t1\t0\t0\t50\t1"
            for s, r in zip(seconds, rss, strict=True)
        ]
        path.write_text("\n".join([HEADER, *rows]) + "\n")
        os.utime(path, (end, end))


@pytest.fixture
def run(tmp_path) -> Path:
    write_benchmarks(tmp_path)
    return tmp_path


def as_tuples(rows: list[stages.StageTiming]) -> list[tuple]:
    return [(r.stage, r.jobs, r.seconds, r.span, r.max_rss_mb) for r in rows]


def test_stage_table_by_hand(run):
    rows = stages.stage_table(stages.read_jobs(run))
    assert as_tuples(rows) == [
        ("data", 3, 17.0, 100.0, 100.5),
        ("train", 2, 70.0, 40.0, 500.0),
        ("evaluate", 1, 15.0, 15.0, 350.0),
        ("reports", 1, 8.0, 8.0, 200.0),
        ("mystery", 1, 1.0, 1.0, None),
        ("total", 8, 111.0, 401.0, 500.0),
    ]


def test_rule_table_in_workflow_order(run):
    rows = stages.stage_table(stages.read_jobs(run), by="rule")
    assert [r.stage for r in rows] == [
        "synth", "download_amc_demo_released", "prepare_eval", "train", "evaluate", "html_report", "mystery", "total",
    ]  # fmt: skip
    assert as_tuples(rows)[3] == ("train", 2, 70.0, 40.0, 500.0)


def test_cli_prints_the_markdown_table(run, capsys, tmp_path):
    out = tmp_path / "stages.md"
    assert amc_main(["report", "stages", "--run", str(run), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| data | 3 | 17.0 | 1 min 40 s | 100 |" in printed
    assert "| evaluate | 1 | 15.0 | 15.0 s | 350 |" in printed
    assert "| mystery | 1 | 1.0 | 1.0 s | NA |" in printed
    assert "| total | 8 | 111.0 | 6 min 41 s | 500 |" in printed
    assert out.read_text() in printed


def test_benchmark_path_layout():
    assert stages.benchmark_path("results/demo", "synth") == "results/demo/benchmarks/synth.tsv"
    assert (
        stages.benchmark_path("results/demo", "train", "{method}/seed{seed}")
        == "results/demo/benchmarks/train/{method}/seed{seed}.tsv"
    )
    assert stages.stage_of("download_albef_14m") == "data" and stages.stage_of("explainers") == "reports"


@pytest.mark.parametrize(
    "text, message",
    [
        (HEADER + "\n", "no benchmark row"),
        ("seconds\tmax_rss\n1\t2\n", "no column 's'"),
        (HEADER + "\nabc\t0:00:01\t1\t1\t1\t1\t0\t0\t50\t1\n", "column 's' is 'abc'"),
        (HEADER + "\n1.0\t0:00:01\t-5\t1\t1\t1\t0\t0\t50\t1\n", "column 'max_rss' is '-5'"),
    ],
)
def test_bad_benchmark_files_name_the_file(tmp_path, text, message):
    path = tmp_path / "benchmarks" / "train" / "amc" / "seed0.tsv"
    path.parent.mkdir(parents=True)
    path.write_text(text)
    with pytest.raises(DataError, match=message) as error:
        stages.read_jobs(tmp_path)
    assert str(path) in str(error.value)


def test_a_run_without_benchmarks_is_a_clear_error(tmp_path, caplog):
    assert amc_main(["report", "stages", "--run", str(tmp_path)]) == 2
    assert "no benchmark folder" in caplog.text


def test_make_demo_ends_with_the_stage_table():
    makefile = (REPO / "Makefile").read_text()
    demo = makefile.split("\ndemo: ", 1)[1].split("\n\n", 1)[0]
    assert demo.rstrip().endswith("amc report stages --run results/demo")
