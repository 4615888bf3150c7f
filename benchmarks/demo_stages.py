"""Before/after timing of the demo's evaluation and report jobs, back to back on the same data.

Needs a finished demo run in this checkout (``make demo``: results/demo, data/demo, .snakemake).
For each version (a git revision, or this working tree) it makes a scratch workspace: the demo's
results copied (the checkpoints hard-linked: no job rewrites them), the data, the paper's table and
the Snakemake records linked or copied; the original run is never touched. It asks that version's
workflow which jobs a forced rerun would run, and their shell commands,

    snakemake --snakefile <version>/Snakefile all --configfile config/demo.yaml -n \\
        --forcerun <rules> --rerun-triggers mtime --printshellcmds

(default ``--rules evaluate``: every evaluation job of the grid and every report after them; the
time of this dry run is the workflow's own start-up, reported as ``snakemake start``), then runs
each command itself, one job at a time in the workflow's order, in the workspace, with that
version's code first on ``PYTHONPATH``. For each job it records the wall seconds and the CPU seconds
(user + system of the job and everything it started, from ``getrusage(RUSAGE_CHILDREN)``): on a
machine shared with other work the CPU seconds move far less than the wall seconds. The versions
alternate round by round (before, after, before, after, ...), so a change in the machine's load hits
both; the tables give the median over the rounds.

It also checks that both versions made the same results: every evaluation's cases, the explainer
evaluations' included (the summary holds the time and the code version), the tables (csv, md, tex)
and the PNG figures, byte for byte.

    python benchmarks/demo_stages.py --before <rev> [--after <rev>] [--rules evaluate] [--per-rule N]
        [--rounds 3] [--out timing.json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import re
import resource
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

# Large and never rewritten by the jobs: hard-linked. Everything else is copied (mtimes kept), since
# a job may write its outputs in place (shell redirection into its log, for one).
LINKED = ("checkpoints", "pretrain", "exports")
START = "snakemake start"  # the dry run's row


@dataclass
class Job:
    rule: str
    command: str


@dataclass
class Version:
    label: str
    code: Path  # its checkout (Snakefile, amc/)
    revision: str
    work: Path  # its scratch workspace
    jobs: list[Job] = field(default_factory=list)
    rounds: list[dict[str, tuple[float, float]]] = field(default_factory=list)  # per job key: (wall, cpu)


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


def workspace(code: Path, run: str, scratch: Path, label: str) -> Path:
    """A scratch copy of the demo run that ``code``'s workflow can rerun without touching the original."""
    work = scratch / f"work-{label}"
    source, target = REPO / "results" / run, work / "results" / run
    target.mkdir(parents=True)
    for entry in source.iterdir():
        flags = "-al" if entry.name in LINKED else "-a"
        subprocess.run(["cp", flags, str(entry), str(target / entry.name)], check=True)
    (work / "results" / "paper").symlink_to(REPO / "results" / "paper")
    (work / "data").symlink_to(REPO / "data")
    (work / "config").symlink_to(code / "config")
    (work / "amc").mkdir()
    (work / "amc" / "resources").symlink_to(code / "amc" / "resources")
    shutil.copytree(REPO / ".snakemake" / "metadata", work / ".snakemake" / "metadata")
    return work


def environment(version: Version) -> dict[str, str]:
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return dict(os.environ, PYTHONPATH=str(version.code), PATH=path)


def timed(
    command: list[str], cwd: Path, env: dict[str, str]
) -> tuple[float, float, subprocess.CompletedProcess]:
    """Run ``command`` to its end: (wall seconds, CPU seconds of it and its descendants, result)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if result.returncode != 0:
        raise SystemExit(
            f"{' '.join(command)[:300]} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        )
    return wall, cpu, result


def plan(
    version: Version, config: str, rules: list[str], per_rule: int | None = None
) -> tuple[list[Job], float, float]:
    """The forced jobs and their commands, in the workflow's order, from the version's own dry run;
    with ``per_rule``, the first ``per_rule`` jobs of each rule by command (the same jobs in every
    version and round; the jobs left out keep their copied outputs, which the reports then read)."""
    command = [
        sys.executable, "-m", "snakemake", "--snakefile", str(version.code / "Snakefile"), "all",
        "--configfile", config, "-n", "--forcerun", *rules, "--rerun-triggers", "mtime",
        "--printshellcmds", "--nolock",
    ]  # fmt: skip
    wall, cpu, result = timed(command, version.work, environment(version))
    jobs = []
    for block in re.split(r"^(?=(?:local)?rule \S+:$)", result.stdout, flags=re.MULTILINE)[1:]:
        rule = re.match(r"(?:local)?rule (\S+):", block).group(1)
        shell = re.search(r"^Shell command: (.*)$", block, flags=re.MULTILINE)
        if shell and shell.group(1) != "None":  # the target rule `all` runs nothing
            jobs.append(Job(rule, shell.group(1)))
    jobs.sort(key=lambda job: (stages.rule_order(job.rule), job.command))
    if per_rule is not None:
        by_rule: dict[str, list[Job]] = {}
        for job in jobs:
            by_rule.setdefault(job.rule, []).append(job)
        jobs = [job for rule_jobs in by_rule.values() for job in rule_jobs[:per_rule]]
    return jobs, wall, cpu


def job_key(job: Job, index: int) -> str:
    return f"{job.rule}#{index}"


def run_round(version: Version) -> dict[str, tuple[float, float]]:
    env = environment(version)
    figures: dict[str, tuple[float, float]] = {}
    for index, job in enumerate(version.jobs):
        wall, cpu, _ = timed(["bash", "-c", f"set -euo pipefail; {job.command}"], version.work, env)
        figures[job_key(job, index)] = (wall, cpu)
    total_wall = sum(w for key, (w, _) in figures.items() if key != START)
    log.info("%s: %d jobs, %.1f s wall, %.1f s CPU", version.label, len(version.jobs), total_wall,
             sum(c for key, (_, c) in figures.items() if key != START))  # fmt: skip
    return figures


def digest_results(work: Path, run: str) -> dict[str, str]:
    """sha256 of what must not change: every evaluation's cases (the explainers' too: points and
    energies), the tables, the PNG figures."""
    root = work / "results" / run
    digests = {}
    for path in sorted([*root.glob("eval/*/seed*/*.json"), *root.glob("eval_explainers/*/seed*/*.json")]):
        cases = json.loads(path.read_text())["cases"]
        digests[str(path.relative_to(root))] = hashlib.sha256(json.dumps(cases).encode()).hexdigest()
    for path in sorted([*root.glob("tables/*"), *root.glob("figures/*.png")]):
        digests[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return digests


def group_sums(version: Version, group) -> list[dict[str, tuple[float, float]]]:
    """Per round: group name -> (sum of wall, sum of CPU) over the jobs of that group."""
    keys = {job_key(job, i): group(job.rule) for i, job in enumerate(version.jobs)} | {START: START}
    sums = []
    for figures in version.rounds:
        by_group: dict[str, tuple[float, float]] = {}
        for key, (wall, cpu) in figures.items():
            name = keys[key]
            old = by_group.get(name, (0.0, 0.0))
            by_group[name] = (old[0] + wall, old[1] + cpu)
        sums.append(by_group)
    return sums


def median_table(before: Version, after: Version, title: str, group) -> str:
    counts = {}
    for job in after.jobs:
        counts[group(job.rule)] = counts.get(group(job.rule), 0) + 1
    b_sums, a_sums = group_sums(before, group), group_sums(after, group)
    names = list(dict.fromkeys([START, *a_sums[0], *b_sums[0]]))
    lines = [
        f"| {title} | jobs | wall before (s) | wall after (s) | CPU before (s) | CPU after (s) | CPU after / before |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name in names:
        wall_b = statistics.median(s.get(name, (0.0, 0.0))[0] for s in b_sums)
        wall_a = statistics.median(s.get(name, (0.0, 0.0))[0] for s in a_sums)
        cpu_b = statistics.median(s.get(name, (0.0, 0.0))[1] for s in b_sums)
        cpu_a = statistics.median(s.get(name, (0.0, 0.0))[1] for s in a_sums)
        ratio = f"{cpu_a / cpu_b:.2f}" if cpu_b else "–"
        jobs = counts.get(name, 1 if name == START else "")
        lines.append(
            f"| {name} | {jobs} | {wall_b:.1f} | {wall_a:.1f} | {cpu_b:.1f} | {cpu_a:.1f} | {ratio} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, help="git revision of the code before")
    parser.add_argument("--after", help="git revision of the code after (default: this working tree)")
    parser.add_argument("--config", default="config/demo.yaml", help="the run's configuration")
    parser.add_argument("--run", default="demo", help="results/<run> of the finished run")
    parser.add_argument(
        "--rules", default="evaluate", help="comma-separated rules to force (and all after them)"
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each version, alternating")
    parser.add_argument(
        "--per-rule", type=int, help="run only the first N forced jobs of each rule (default: all)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    parser.add_argument("--out", type=Path, help="also write every round's figures here (JSON)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    if not (REPO / "results" / args.run / "eval").is_dir() or not (REPO / ".snakemake" / "metadata").is_dir():
        raise SystemExit(f"no finished run results/{args.run} in {REPO} (run the demo first)")
    scratch = Path(tempfile.mkdtemp(prefix="demo-stages-"))
    versions: list[Version] = []
    load = [os.getloadavg()]
    try:
        for label, revision in (("before", args.before), ("after", args.after)):
            code, described = checkout(revision, scratch, label)
            versions.append(Version(label, code, described, workspace(code, args.run, scratch, label)))
        for round_number in range(args.rounds):
            for version in versions:
                log.info(
                    "round %d/%d: %s (%s)", round_number + 1, args.rounds, version.label, version.revision
                )
                jobs, wall, cpu = plan(version, args.config, args.rules.split(","), args.per_rule)
                version.jobs = version.jobs or jobs
                if [job.command for job in jobs] != [job.command for job in version.jobs]:
                    raise SystemExit(
                        f"{version.label}: the dry run planned other jobs in round {round_number + 1}"
                    )
                version.rounds.append({START: (wall, cpu), **run_round(version)})
                load.append(os.getloadavg())
        before, after = versions
        same = digest_results(before.work, args.run) == digest_results(after.work, args.run)
        print(
            f"\nbefore: {before.revision}   after: {after.revision}   rounds: {args.rounds} each, alternating"
        )
        subset = f" ({args.per_rule} job(s) of each rule)" if args.per_rule else ""
        print(f"forced: {args.rules} and every job after it{subset}, run one at a time; load average (1 min) during the "
              f"rounds: {min(x[0] for x in load):.1f} to {max(x[0] for x in load):.1f}")  # fmt: skip
        print(f"results identical (evaluation cases, tables, PNG figures): {'yes' if same else 'NO'}\n")
        print(median_table(before, after, "stage", stages.stage_of) + "\n")
        print(median_table(before, after, "rule", lambda rule: rule))
        if args.out:
            args.out.write_text(
                json.dumps(
                    {
                        v.label: {
                            "revision": v.revision,
                            "jobs": [vars(j) for j in v.jobs],
                            "rounds": v.rounds,
                        }
                        for v in versions
                    }
                    | {"same": same, "load": load},
                    indent=1,
                )  # fmt: skip
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
