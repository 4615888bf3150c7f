"""Time and memory of a workflow run per stage, from Snakemake's benchmark files.

Every rule of the workflow has a ``benchmark:`` directive that writes one TSV per job under
``results/<run>/benchmarks/`` (:func:`benchmark_path`): ``<rule>.tsv`` for a rule without
wildcards, ``<rule>/<wildcards>.tsv`` otherwise. Snakemake's TSV has a header and one row per
repetition; the columns used here are ``s`` (wall seconds of the job) and ``max_rss`` (MB, ``NA``
when the job ended before Snakemake's first sample).

A stage groups rules (:data:`STAGES`; a rule not listed is a stage of its own). For each stage:
the jobs, the sum of their seconds, the wall span (first start to last end, where a job's start
is its file's modification time, written as the job ends, minus its seconds: approximate, and
wrong once the files are copied) and the largest RSS of one job.

    amc report stages --run results/<run>      # `make demo` ends with it

This module imports nothing heavy: the workflow's common.smk imports :func:`benchmark_path`.
"""

from __future__ import annotations

import csv
import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from amc.io import DataError

log = logging.getLogger("amc.report.stages")

BENCHMARKS_FOLDER = "benchmarks"

# stage -> its rules, in the order the workflow runs them; `download_<artifact>` is data.
STAGES: dict[str, tuple[str, ...]] = {
    "data": ("synth", "download", "prepare_vg", "prepare_eval"),
    "pretrain": ("pretrain",),
    "train": ("train", "export_checkpoint"),
    "evaluate": ("evaluate", "evaluate_explainers"),
    "reports": (
        "run_config",
        "table1",
        "table1_released",
        "ablation",
        "figures",
        "qualitative",
        "explainers",
        "html_report",
    ),
}


def benchmark_path(run_dir: str, rule: str, wildcards: str = "") -> str:
    """Where the job of ``rule`` writes its benchmark TSV (``wildcards``: e.g. ``{method}/seed{seed}``)."""
    folder = f"{run_dir}/{BENCHMARKS_FOLDER}"
    return f"{folder}/{rule}/{wildcards}.tsv" if wildcards else f"{folder}/{rule}.tsv"


def stage_of(rule: str) -> str:
    """The stage a rule belongs to (a rule of no stage is a stage of its own)."""
    if rule.startswith("download_"):
        rule = "download"
    for stage, rules in STAGES.items():
        if rule in rules:
            return stage
    return rule


@dataclass(frozen=True)
class JobTiming:
    """One job's benchmark file."""

    rule: str
    path: Path
    seconds: float
    max_rss_mb: float | None  # None: not sampled (NA)
    end: float  # the file's modification time (epoch seconds)

    @property
    def start(self) -> float:
        return self.end - self.seconds


@dataclass(frozen=True)
class StageTiming:
    """One row of the per-stage table."""

    stage: str
    jobs: int
    seconds: float  # the sum over the jobs (CPU-side cost; jobs may run in parallel)
    span: float  # first start to last end (wall clock)
    max_rss_mb: float | None


def _number(text: str, path: Path, column: str) -> float | None:
    if text in ("NA", "-", ""):
        return None
    try:
        value = float(text)
    except ValueError:
        raise DataError(f"{path}: column {column!r} is {text!r}, not a number") from None
    if not math.isfinite(value) or value < 0:
        raise DataError(f"{path}: column {column!r} is {text!r}, not a non-negative number")
    return value


def read_job(path: Path, rule: str) -> JobTiming:
    """One benchmark TSV (several repetitions: their mean seconds and largest RSS)."""
    with path.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    if not rows:
        raise DataError(f"{path}: no benchmark row (a Snakemake benchmark TSV has a header and a row)")
    for column in ("s", "max_rss"):
        if column not in rows[0]:
            raise DataError(f"{path}: no column {column!r} (not a Snakemake benchmark TSV)")
    seconds = [_number(row["s"], path, "s") for row in rows]
    if any(s is None for s in seconds):
        raise DataError(f"{path}: column 's' has no value")
    rss = [r for r in (_number(row["max_rss"], path, "max_rss") for row in rows) if r is not None]
    return JobTiming(
        rule=rule,
        path=path,
        seconds=sum(seconds) / len(seconds),
        max_rss_mb=max(rss) if rss else None,
        end=path.stat().st_mtime,
    )


def read_jobs(run_dir: Path) -> list[JobTiming]:
    """Every benchmark file under ``run_dir/benchmarks`` (the rule is the first path component)."""
    folder = Path(run_dir) / BENCHMARKS_FOLDER
    if not folder.is_dir():
        raise DataError(f"{folder}: no benchmark folder (the workflow's rules write their benchmarks there)")
    jobs = []
    for path in sorted(folder.rglob("*.tsv")):
        relative = path.relative_to(folder)
        rule = relative.parts[0] if len(relative.parts) > 1 else relative.stem
        jobs.append(read_job(path, rule))
    log.debug("%d benchmark files under %s", len(jobs), folder)
    return jobs


def _summary(stage: str, jobs: Sequence[JobTiming]) -> StageTiming:
    rss = [job.max_rss_mb for job in jobs if job.max_rss_mb is not None]
    return StageTiming(
        stage=stage,
        jobs=len(jobs),
        seconds=sum(job.seconds for job in jobs),
        span=max(job.end for job in jobs) - min(job.start for job in jobs),
        max_rss_mb=max(rss) if rss else None,
    )


def rule_order(rule: str) -> tuple[int, int, str]:
    """Stages in the workflow's order, rules in their stage's order, unknown ones last by name."""
    stage = stage_of(rule)
    if stage not in STAGES:
        return (len(STAGES), 0, rule)
    rules = STAGES[stage]
    key = "download" if rule.startswith("download_") else rule
    return (list(STAGES).index(stage), rules.index(key), rule)


def stage_table(jobs: Iterable[JobTiming], by: str = "stage") -> list[StageTiming]:
    """One row per stage (``by="rule"``: per rule) present, in the workflow's order (stages of no
    known group after, by name), then ``total``."""
    if by not in ("stage", "rule"):
        raise ValueError(f"by must be 'stage' or 'rule', not {by!r}")
    jobs = list(jobs)
    groups: dict[str, list[JobTiming]] = {}
    for job in jobs:
        groups.setdefault(stage_of(job.rule) if by == "stage" else job.rule, []).append(job)
    if by == "stage":
        order = [s for s in STAGES if s in groups] + sorted(s for s in groups if s not in STAGES)
    else:
        order = sorted(groups, key=rule_order)
    rows = [_summary(name, groups[name]) for name in order]
    if jobs:
        rows.append(_summary("total", jobs))
    return rows


def _duration(seconds: float) -> str:
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest:02d} s" if minutes else f"{seconds:.1f} s"


def format_table(rows: Sequence[StageTiming], by: str = "stage") -> str:
    """The table as Markdown (``by``: the first column's name)."""
    lines = [
        f"| {by} | jobs | sum of job seconds | wall span | max RSS (MB) |",
        "|---|---:|---:|---:|---:|",
    ]
    for row in rows:
        rss = "NA" if row.max_rss_mb is None else f"{row.max_rss_mb:,.0f}"
        lines.append(f"| {row.stage} | {row.jobs} | {row.seconds:,.1f} | {_duration(row.span)} | {rss} |")
    return "\n".join(lines) + "\n"
