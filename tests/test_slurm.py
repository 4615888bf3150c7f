"""The workflow on a real Slurm cluster (issue #16), through the shipped workflow/profiles/slurm.

1. The ci grid: every rule but `all` is a Slurm job (GPU rules on the GPU partition with
   --gpus), and the results equal a local run of the same configuration bit for bit.
2. A second grid on the ci run's data: a training job of two processes (finetune.gpus: 2)
   is cancelled with scancel after its first checkpoint, resubmitted by Snakemake
   (retries) and resumes from checkpoint_last.pt; a run with a bad configuration value
   fails once per allowed attempt, with its logs named; the two processes end with
   identical weights, equal to one process accumulating gradients over the same global
   batch.

The cluster (tests/slurm_cluster.py) is one node on this machine, started once for the
module. Where it cannot start (not root, no apt, a daemon fails) the tests skip and say
why; `make test-slurm` sets AMC_REQUIRE_SLURM=1, which turns that into a failure (CI runs it
with REQUIRE_SLURM=0 after `make test`, which leaves these tests out).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import torch
import yaml

from amc import grid
from tests.helpers import BIN, REPO, SNAKEMAKE, job_counts
from tests.slurm_cluster import CPU_PARTITION, GPU_PARTITION, ClusterUnavailable, Job, SlurmCluster

SHIPPED_PROFILE = REPO / "workflow/profiles/slurm/config.yaml"
REQUIRE = os.environ.get("AMC_REQUIRE_SLURM") == "1"

pytestmark = [pytest.mark.slurm, pytest.mark.slow, pytest.mark.subprocess, pytest.mark.timeout(1800)]

# The ci grid's rules, all of them Slurm jobs (`all` has no command and stays local);
# the GPU rules ask for `gpu` and go to the GPU partition.
SLURM_RULES = {
    "synth", "prepare_vg", "prepare_eval", "pretrain", "train", "export_checkpoint", "evaluate",
    "run_config", "table1", "ablation", "figures", "qualitative", "evaluate_explainers", "explainers",
}  # fmt: skip
# Local rules (`localrule: True`) run where Snakemake runs: the downloads (compute nodes often
# have no internet; in the ci grid, the copy of the exported "released" checkpoint) and the HTML
# report (a second Snakemake process that reads the records of the running one under .snakemake/).
LOCAL_RULE_PREFIX = "download_"
LOCAL_RULES = {"html_report"}
GPU_RULES = {"pretrain", "train", "evaluate", "qualitative", "evaluate_explainers"}

# What the test cluster needs on top of the shipped profile (placeholders filled in).
TEST_CLUSTER_SETTINGS = {
    # No accounting database on the test cluster: the plugin polls squeue instead of sacct.
    "slurm-status-command": "squeue",
    # The plugin's first status check comes after 40 s by default (then every +10 s while
    # nothing finishes): right for hour-long jobs, slow for the ci grid's seconds-long ones.
    "slurm-init-seconds-before-status-checks": 10,
    # Keep the Slurm logs of successful jobs too, to read them afterwards.
    "slurm-keep-successful-logs": True,
}

# The second grid: a training run long enough to be cancelled after a checkpoint.
LONG_RUN = {"optim.max_steps": 16, "save_every_steps": 4}
BAD_VALUE = {"batch_size": 100000}  # more than the training set: amc train stops with AmcError


def unavailable(reason: str) -> None:
    if REQUIRE:
        pytest.fail(f"AMC_REQUIRE_SLURM=1 but the Slurm test cluster is unavailable: {reason}", pytrace=False)
    pytest.skip(f"no Slurm test cluster: {reason.splitlines()[0]}")


@pytest.fixture(scope="module")
def cluster():
    if SNAKEMAKE is None:
        unavailable("snakemake is not installed")
    if importlib.util.find_spec("snakemake_executor_plugin_slurm") is None:
        unavailable("the executor plugin is not installed (pip install -e '.[slurm]')")
    started = time.monotonic()
    try:
        cluster = SlurmCluster.start()
    except ClusterUnavailable as error:
        print(error, file=sys.stderr)  # the daemons' logs, shown by pytest with -rs or on failure
        unavailable(str(error))
    print(
        f"Slurm test cluster up in {time.monotonic() - started:.1f} s "
        f"({cluster.install_seconds:.1f} s of it installing packages)",
        file=sys.stderr,
    )
    yield cluster
    cluster.stop()


# ------------------------------------------------------------------ helpers


def scratch(folder: Path) -> Path:
    """A run folder that sees the repository's configurations (as test_workflow's end-to-end test)."""
    for name in ("config", "results/paper", "amc/resources"):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).symlink_to(REPO / name)
    return folder


def ci_config(**changes) -> dict:
    config = yaml.safe_load((REPO / "config/ci.yaml").read_text())
    config.update(changes)
    return config


def write_yaml(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def fill_profile(cluster: SlurmCluster, folder: Path) -> Path:
    """workflow/profiles/slurm with its placeholders filled in for this cluster, as a user edits it.

    On top: TEST_CLUSTER_SETTINGS, and every rule's memory request capped to what the node
    can give two jobs at once (the configurations size train and evaluate for the paper).
    """
    text = SHIPPED_PROFILE.read_text()
    for placeholder, value in {
        "<your account>": cluster.account,
        "<your partition>": CPU_PARTITION,
        "<your gpu partition>": GPU_PARTITION,
    }.items():
        text = text.replace(f'"{placeholder}"', value)
    assert "<your" not in text, "a placeholder of the shipped profile is not filled in"
    profile = yaml.safe_load(text)
    profile.update(TEST_CLUSTER_SETTINGS)
    memory = min(2000, cluster.memory_mb // cluster.cpus)
    for rule in SLURM_RULES:
        profile["set-resources"].setdefault(rule, {})["mem_mb"] = memory
    folder.mkdir(parents=True, exist_ok=True)
    write_yaml(folder / "config.yaml", profile)
    return folder


def snakemake_command(work: Path, *args: str) -> list[str]:
    return [SNAKEMAKE, "--snakefile", str(REPO / "Snakefile"), "--directory", str(work), "--nolock", *args]


def job_env(cluster: SlurmCluster) -> dict[str, str]:
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    env["AMC_GPU_LOCK_DIR"] = str(cluster.root / "gpu-locks")  # nothing left behind in /tmp
    return cluster.env(env)


def start(command: list[str], work: Path, env: dict[str, str], name: str) -> subprocess.Popen:
    """Snakemake in the background, its output in WORK/NAME.out."""
    with open(work / f"{name}.out", "w") as out:
        return subprocess.Popen(command, cwd=work, env=env, stdout=out, stderr=subprocess.STDOUT)


def finish(process: subprocess.Popen, work: Path, name: str, timeout: float) -> tuple[int, str]:
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    return process.returncode, (work / f"{name}.out").read_text()


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=False)["model"]


def cases(path: Path) -> list[dict]:
    return json.loads(path.read_text())["cases"]


# ------------------------------------------------------------------ 1. the ci grid


@dataclasses.dataclass
class CiRuns:
    slurm: Path  # run folder of the Slurm run
    local: Path  # the same configuration run locally
    output: str  # Snakemake's output of the Slurm run
    jobs: list[Job]  # the cluster's jobs after it
    planned: Counter  # rule -> jobs, from a dry run
    seconds: float


@pytest.fixture(scope="module")
def ci_runs(cluster, tmp_path_factory) -> CiRuns:
    slurm, local = scratch(tmp_path_factory.mktemp("slurm")), scratch(tmp_path_factory.mktemp("local"))
    env = job_env(cluster)
    dry = subprocess.run(
        snakemake_command(slurm, "-n", "--forceall", "--quiet", "rules", "--configfile", "config/ci.yaml"),
        cwd=slurm, env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    planned = job_counts(dry.stdout)
    planned.pop("all")

    # The local reference runs alongside, on one core (its jobs use one thread, as on the cluster).
    config = grid.resolve_paths(grid.validate_config(ci_config()))
    evals = [target["path"] for target in grid.eval_targets(config)]
    local_run = start(
        snakemake_command(local, *evals, "--configfile", "config/ci.yaml", "--cores", "1", "--resources", "gpu=0"),
        local, env, "snakemake",
    )  # fmt: skip
    started = time.monotonic()
    profile = fill_profile(cluster, slurm / "profile")
    command = snakemake_command(slurm, "all", "--profile", str(profile), "--configfile", "config/ci.yaml")
    code, output = finish(start(command, slurm, env, "snakemake"), slurm, "snakemake", timeout=1200)
    seconds = time.monotonic() - started
    print(f"ci grid on Slurm: {seconds:.0f} s", file=sys.stderr)
    assert code == 0, f"the ci grid failed on Slurm:\n{output[-6000:]}\n{cluster.logs()}"
    local_code, local_output = finish(local_run, local, "snakemake", timeout=600)
    assert local_code == 0, f"the local reference run failed:\n{local_output[-4000:]}"
    return CiRuns(slurm, local, output, cluster.jobs(), planned, seconds)


def test_every_rule_of_the_ci_grid_is_a_slurm_job(ci_runs):
    jobs = ci_runs.jobs
    local = Counter(
        {r: n for r, n in ci_runs.planned.items() if r.startswith(LOCAL_RULE_PREFIX) or r in LOCAL_RULES}
    )
    assert set(local) > LOCAL_RULES, (
        "the ci grid has local rules (the released checkpoint's download, the report)"
    )
    on_slurm = ci_runs.planned - local
    assert set(on_slurm) == SLURM_RULES
    assert Counter(job.rule for job in jobs) == on_slurm, (
        "each planned job ran once, on Slurm; local rules did not"
    )
    ci = grid.validate_config(ci_config())
    for job in jobs:
        assert job.state == "COMPLETED", job
        assert job.account == "amc", job
        if job.rule in GPU_RULES:
            assert (job.partition, job.gpus) == (GPU_PARTITION, "gres:gpu:1"), job
        else:
            assert (job.partition, job.gpus) == (CPU_PARTITION, ""), job
    train = next(job for job in jobs if job.rule == "train")
    assert train.cpus == ci["finetune"]["threads"]  # threads -> --cpus-per-task
    assert train.time_limit_min == ci["finetune"]["runtime"]  # runtime -> --time


def test_each_slurm_job_leaves_its_logs(ci_runs):
    run = ci_runs.slurm / "results/ci"
    for job in ci_runs.jobs:
        assert job.log.is_file() and job.log.is_relative_to(ci_runs.slurm / ".snakemake/slurm_logs"), job
        assert job.log.parent.name in (f"rule_{job.rule}", job.wildcards), job
    assert (run / "logs/train/amc/seed0.log").is_file() and (run / "logs/pretrain.log").is_file()
    # amc gpu-run took the GPU Slurm gave the job, with locks private to the job
    train = next(job for job in ci_runs.jobs if job.rule == "train")
    log = (run / "logs/train/amc/seed0.log").read_text()
    assert re.search(rf"gpu-run: took GPU \d+ \(locks in \S+/slurm-{train.id}\)", log), log[:2000]


def test_the_slurm_results_equal_a_local_run(ci_runs):
    config = grid.resolve_paths(grid.validate_config(ci_config()))
    for target in grid.eval_targets(config):
        path = target["path"]
        assert cases(ci_runs.slurm / path) == cases(ci_runs.local / path), path
    for checkpoint in (
        "results/ci/pretrain/checkpoint_final.pt",
        "results/ci/checkpoints/amc/seed0/checkpoint_final.pt",
    ):
        on_slurm, local = weights(ci_runs.slurm / checkpoint), weights(ci_runs.local / checkpoint)
        assert on_slurm.keys() == local.keys()
        for key in on_slurm:
            assert torch.equal(on_slurm[key], local[key]), f"{checkpoint}: {key}"
    run = ci_runs.slurm / "results/ci"
    for name in (
        "tables/table1.csv",
        "tables/ablation.csv",
        "figures/qualitative.png",
        "figures/training_curves.png",
    ):
        assert (run / name).stat().st_size > 0, name


# ------------------------------------------------------------------ 2. failures and two processes


@dataclasses.dataclass
class ScaleOut:
    work: Path
    code: int
    output: str
    jobs: list[Job]  # this run's jobs
    cancelled: Job  # the training job cancelled after its first checkpoint
    reference: Path  # checkpoint_final.pt of one process accumulating gradients


def scaleout_config(run: str, gpus: int, **method_optim) -> dict:
    """The ci grid on the ci run's data and pretrained model, longer training, `gpus` per run."""
    config = ci_config(run=run, init_checkpoint="results/ci/pretrain/checkpoint_final.pt")
    config["pretrain"]["enabled"] = False
    config["finetune"]["gpus"] = gpus
    config["finetune"]["overrides"].update(LONG_RUN)
    if method_optim:
        config["methods"]["amc"]["optim"] = method_optim
    return config


@pytest.fixture(scope="module")
def scaleout(cluster, ci_runs) -> ScaleOut:
    work, env = ci_runs.slurm, job_env(cluster)
    known = {job.id for job in cluster.jobs()}
    config = scaleout_config("scaleout", gpus=2)
    config["methods"]["bad"] = {"label": "bad value", "kind": "finetune", "optim": BAD_VALUE}
    write_yaml(work / "scaleout.yaml", config)
    # One process with gradient accumulation over the same global batch (8 x 2), locally.
    write_yaml(work / "accum.yaml", scaleout_config("accum", gpus=1, grad_accum=2))
    reference = "results/accum/checkpoints/amc/seed0/checkpoint_final.pt"
    local_run = start(
        snakemake_command(work, reference, "--configfile", "accum.yaml", "--cores", "1", "--resources", "gpu=0"),
        work, env, "accum",
    )  # fmt: skip

    targets = [f"results/scaleout/train/{method}/seed0/metrics.jsonl" for method in ("amc", "bad")]
    command = snakemake_command(
        work, *targets, "--profile", str(work / "profile"), "--configfile", "scaleout.yaml"
    )
    process = start(command, work, env, "scaleout")
    checkpoints = work / "results/scaleout/checkpoints/amc/seed0"
    deadline = time.monotonic() + 600
    while True:
        assert process.poll() is None, (work / "scaleout.out").read_text()[-4000:]
        assert time.monotonic() < deadline, "no checkpoint of the amc run within 600 s"
        running = [
            job for job in cluster.jobs()
            if job.id not in known and job.rule == "train" and job.wildcards == "amc_0" and job.state == "RUNNING"
        ]  # fmt: skip
        if running and (checkpoints / "checkpoint_last.pt").exists():
            break
        time.sleep(0.5)
    cluster.run("scancel", str(running[0].id))
    assert not (checkpoints / "checkpoint_final.pt").exists(), "cancelled too late to test resuming"
    code, output = finish(process, work, "scaleout", timeout=900)
    local_code, local_output = finish(local_run, work, "accum", timeout=600)
    assert local_code == 0, f"the accumulation reference failed:\n{local_output[-4000:]}"
    jobs = [job for job in cluster.jobs() if job.id not in known]
    return ScaleOut(work, code, output, jobs, running[0], work / reference)


def train_jobs(scaleout: ScaleOut, method: str) -> list[Job]:
    return [job for job in scaleout.jobs if job.rule == "train" and job.wildcards == f"{method}_0"]


def test_a_cancelled_training_job_is_resubmitted_and_resumes(scaleout):
    attempts = train_jobs(scaleout, "amc")
    assert [job.state for job in attempts] == ["CANCELLED", "COMPLETED"], scaleout.output[-4000:]
    assert attempts[0].id == scaleout.cancelled.id
    run = scaleout.work / "results/scaleout"
    log = (run / "logs/train/amc/seed0.log").read_text()  # the second attempt's
    resumed = re.search(r"resumed from \S+/checkpoint_last\.pt at step (\d+)", log)
    assert resumed, log[-3000:]
    assert 0 < int(resumed.group(1)) < LONG_RUN["optim.max_steps"]
    steps = [
        json.loads(line)["step"] for line in (run / "train/amc/seed0/metrics.jsonl").read_text().splitlines()
    ]
    assert steps == list(range(1, LONG_RUN["optim.max_steps"] + 1)), "each step logged exactly once"


def test_a_bad_configuration_fails_once_per_allowed_attempt(scaleout):
    profile = yaml.safe_load(SHIPPED_PROFILE.read_text())
    attempts = train_jobs(scaleout, "bad")
    assert [job.state for job in attempts] == ["FAILED"] * (1 + profile["retries"])
    assert scaleout.code != 0
    log = "results/scaleout/logs/train/bad/seed0.log"
    assert "fewer than one global batch" in (scaleout.work / log).read_text()
    # Snakemake names the command's log and the Slurm log of each failed attempt
    for job in attempts:
        assert re.search(rf"log: {re.escape(log)}, {re.escape(str(job.log))}", scaleout.output), job
    # keep-going: the failure does not stop the other run
    assert (scaleout.work / "results/scaleout/train/amc/seed0/metrics.jsonl").is_file()


def test_two_gpus_start_two_training_processes_in_one_job(scaleout):
    for job in train_jobs(scaleout, "amc"):
        assert (job.partition, job.gpus, job.cpus) == (GPU_PARTITION, "gres:gpu:2", 1), job
    log = (scaleout.work / "results/scaleout/logs/train/amc/seed0.log").read_text()
    took = re.search(
        r"gpu-run: took GPU (\S+) .*: torchrun --standalone --nproc-per-node 2 -m amc train", log
    )
    assert took and len(took.group(1).split(",")) == 2, log[:2000]
    assert log.count("weights identical on 2 processes") >= 1


def test_two_processes_equal_one_process_accumulating_gradients(scaleout):
    two = weights(scaleout.work / "results/scaleout/checkpoints/amc/seed0/checkpoint_final.pt")
    one = weights(scaleout.reference)
    assert two.keys() == one.keys()
    worst = max(float((two[key].float() - one[key].float()).abs().max()) for key in two)
    print(f"largest difference between 2 processes and accumulation: {worst:.3g}", file=sys.stderr)
    for key in two:
        torch.testing.assert_close(two[key], one[key], rtol=1e-4, atol=1e-5, msg=key)
