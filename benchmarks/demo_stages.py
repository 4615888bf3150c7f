"""Before/after timing of the demo's evaluation and report stages, back to back on the same data.

Needs a finished demo run in this checkout (``make demo``: results/demo, data/demo, .snakemake).
For each version (a git revision, or this working tree) it makes a scratch workspace: the demo's
results copied (the checkpoints hard-linked: no round rewrites them), the data, the paper's table and
the Snakemake records linked or copied; the original run is never touched. Each round reruns, with that version's own Snakefile and code,

    snakemake --snakefile <version>/Snakefile all --configfile config/demo.yaml --cores 2 \\
        --forcerun <rules> --rerun-triggers mtime

(the demo's command, forced from ``--rules``, default ``evaluate``: every evaluation job of the grid
and every report downstream of them), then reads the jobs' benchmark files with
``amc.report.stages``. The versions alternate (before, after, before, after, ...) so that a change
in the machine's load hits both; the table gives the median over the rounds of each stage's and
each rule's sum of job seconds, and of the snakemake command's wall time.

It also checks that both versions made the same results: the evaluation cases (the summary holds
the time and the code version), the tables (csv, md, tex) and the PNG figures, byte for byte.

    python benchmarks/demo_stages.py --before <rev> [--after <rev>] [--rounds 3] [--out timing.json]

Both versions must write benchmark files (the workflow's ``benchmark:`` directives).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from amc.report import stages  # noqa: E402

log = logging.getLogger("demo_stages")


@dataclass
class Version:
    label: str
    code: Path  # its checkout (Snakefile, amc/)
    revision: str
    work: Path  # its scratch workspace
    rounds: list[dict] = field(default_factory=list)  # per round: {"wall": s, "stage": {...}, "rule": {...}}


def git(*args: str, cwd: Path = REPO) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def checkout(revision: str | None, scratch: Path, label: str) -> tuple[Path, str]:
    """This working tree (None) or a detached worktree of ``revision``."""
    if revision is None:
        dirty = " + uncommitted changes" if git("status", "--porcelain", "--untracked-files=no") else ""
        return REPO, git("rev-parse", "--short", "HEAD") + dirty
    path = scratch / f"code-{label}"
    git("worktree", "add", "--detach", str(path), revision)
    return path, git("rev-parse", "--short", revision)


# Large and never rewritten by the rounds: hard-linked. Everything else is copied (mtimes kept), since
# a rerun job may write its outputs in place.
LINKED = ("checkpoints", "pretrain", "exports")


def workspace(code: Path, run: str, scratch: Path, label: str) -> Path:
    """A scratch copy of the demo run that ``code``'s workflow can rerun without touching the original."""
    work = scratch / f"work-{label}"
    source, target = REPO / "results" / run, work / "results" / run
    target.mkdir(parents=True)
    for entry in source.iterdir():
        if entry.name in LINKED:
            subprocess.run(["cp", "-al", str(entry), str(target / entry.name)], check=True)
        else:
            subprocess.run(["cp", "-a", str(entry), str(target / entry.name)], check=True)
    (work / "results" / "paper").symlink_to(REPO / "results" / "paper")
    (work / "data").symlink_to(REPO / "data")
    (work / "config").symlink_to(code / "config")
    (work / "amc").mkdir()
    (work / "amc" / "resources").symlink_to(code / "amc" / "resources")
    shutil.copytree(REPO / ".snakemake" / "metadata", work / ".snakemake" / "metadata")
    return work


def run_round(version: Version, config: str, rules: list[str], cores: int, run: str) -> dict:
    env = dict(
        os.environ,
        PYTHONPATH=str(version.code),
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    )
    command = [
        sys.executable, "-m", "snakemake", "--snakefile", str(version.code / "Snakefile"), "all",
        "--configfile", config, "--cores", str(cores), "--forcerun", *rules,
        "--rerun-triggers", "mtime", "--nolock",
    ]  # fmt: skip
    started = time.perf_counter()
    result = subprocess.run(command, cwd=version.work, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(
            f"{version.label}: snakemake failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        )
    jobs = stages.read_jobs(version.work / "results" / run)
    fresh = [job for job in jobs if job.end >= time.time() - wall - 1]  # this round's jobs only
    by_stage = {row.stage: row.seconds for row in stages.stage_table(fresh)}
    by_rule = {row.stage: row.seconds for row in stages.stage_table(fresh, by="rule")}
    jobs_by_rule = {row.stage: row.jobs for row in stages.stage_table(fresh, by="rule")}
    log.info("%s: %.1f s wall, %d jobs, %.1f job-seconds", version.label, wall, len(fresh), by_stage["total"])
    return {"wall": wall, "stage": by_stage, "rule": by_rule, "jobs": jobs_by_rule}


def digest_results(work: Path, run: str) -> dict[str, str]:
    """sha256 of what must not change: every evaluation's cases, the tables, the PNG figures."""
    root = work / "results" / run
    digests = {}
    for path in sorted(root.glob("eval/*/seed*/*.json")):
        cases = json.loads(path.read_text())["cases"]
        digests[str(path.relative_to(root))] = hashlib.sha256(json.dumps(cases).encode()).hexdigest()
    for path in sorted([*root.glob("tables/*"), *root.glob("figures/*.png")]):
        digests[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return digests


def median_table(before: Version, after: Version, key: str) -> str:
    names = list(dict.fromkeys([*before.rounds[0][key], *after.rounds[0][key]]))
    lines = [
        f"| {key} | jobs | before (s) | after (s) | after / before |",
        "|---|---:|---:|---:|---:|",
    ]
    for name in names:
        b = statistics.median(r[key].get(name, 0.0) for r in before.rounds)
        a = statistics.median(r[key].get(name, 0.0) for r in after.rounds)
        jobs = after.rounds[0]["jobs"].get(name, "") if key == "rule" else ""
        ratio = f"{a / b:.2f}" if b else "–"
        lines.append(f"| {name} | {jobs} | {b:.1f} | {a:.1f} | {ratio} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, help="git revision of the code before")
    parser.add_argument("--after", help="git revision of the code after (default: this working tree)")
    parser.add_argument("--config", default="config/demo.yaml")
    parser.add_argument("--run", default="demo", help="results/<run> of the finished run")
    parser.add_argument(
        "--rules", default="evaluate", help="comma-separated rules to force (and all after them)"
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each version, alternating")
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    parser.add_argument("--out", type=Path, help="also write every round's figures here (JSON)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    if not (REPO / "results" / args.run / "eval").is_dir() or not (REPO / ".snakemake" / "metadata").is_dir():
        raise SystemExit(f"no finished run results/{args.run} in {REPO} (run the demo first)")
    scratch = Path(tempfile.mkdtemp(prefix="demo-stages-"))
    versions = []
    try:
        for label, revision in (("before", args.before), ("after", args.after)):
            code, described = checkout(revision, scratch, label)
            versions.append(Version(label, code, described, workspace(code, args.run, scratch, label)))
        rules = args.rules.split(",")
        for round_number in range(args.rounds):
            for version in versions:
                log.info(
                    "round %d/%d: %s (%s)", round_number + 1, args.rounds, version.label, version.revision
                )
                version.rounds.append(run_round(version, args.config, rules, args.cores, args.run))
        before, after = versions
        same = digest_results(before.work, args.run) == digest_results(after.work, args.run)
        load = os.getloadavg()
        print(
            f"\nbefore: {before.revision}   after: {after.revision}   rounds: {args.rounds} each, alternating"
        )
        print(f"forced: {args.rules} (and every job after it); --cores {args.cores}; load average now {load}")
        print(f"results identical (evaluation cases, tables, PNG figures): {'yes' if same else 'NO'}\n")
        walls = [statistics.median(r["wall"] for r in v.rounds) for v in versions]
        print(f"snakemake wall time, median: before {walls[0]:.1f} s, after {walls[1]:.1f} s\n")
        print(median_table(before, after, "stage") + "\n")
        print(median_table(before, after, "rule"))
        if args.out:
            args.out.write_text(
                json.dumps(
                    {v.label: {"revision": v.revision, "rounds": v.rounds} for v in versions}
                    | {"same": same},
                    indent=1,
                )
            )
        return 0 if same else 1
    finally:
        for version in versions:
            if version.code != REPO:
                git("worktree", "remove", "--force", str(version.code))
        if args.keep:
            print(f"scratch kept: {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
