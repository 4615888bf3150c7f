"""`amc gpu-run` with fake device lists: one lock per device, waiting when all are taken."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from amc import gpu

CHILD = (
    "import os, sys, time; "
    "open(sys.argv[1], 'w').write(f\"{os.environ['CUDA_VISIBLE_DEVICES']} {time.time()}\"); "
    "time.sleep(float(sys.argv[2])); "
    "open(sys.argv[1], 'a').write(f' {time.time()}')"
)


def gpu_run(tmp_path: Path, name: str, sleep: float, env: dict, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "amc", "gpu-run", "--poll", "0.05", *extra, "--",
         sys.executable, "-c", CHILD, str(tmp_path / name), str(sleep)],
        env=env,
    )  # fmt: skip


def read(path: Path) -> tuple[str, float, float]:
    device, start, end = path.read_text().split()
    return device, float(start), float(end)


@pytest.fixture()
def env(tmp_path):
    environ = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    environ.pop("SLURM_JOB_ID", None)
    environ.update(AMC_FAKE_GPUS="0,1,2,3", AMC_GPU_LOCK_DIR=str(tmp_path / "locks"))
    return environ


@pytest.mark.subprocess
def test_four_jobs_get_four_devices_and_a_fifth_waits(tmp_path, env):
    first = [gpu_run(tmp_path, f"job{i}", 1.5, env) for i in range(4)]
    time.sleep(0.8)  # the four have their devices
    fifth = gpu_run(tmp_path, "job4", 0.0, env)
    for process in [*first, fifth]:
        assert process.wait(timeout=30) == 0
    runs = [read(tmp_path / f"job{i}") for i in range(5)]
    assert sorted(r[0] for r in runs[:4]) == ["0", "1", "2", "3"]
    earliest_end = min(r[2] for r in runs[:4])
    assert runs[4][1] >= earliest_end - 0.05  # started only after one of the four finished
    assert runs[4][0] in {"0", "1", "2", "3"}


@pytest.mark.subprocess
def test_honours_cuda_visible_devices(tmp_path, env):
    env = dict(env, CUDA_VISIBLE_DEVICES="5,7")
    jobs = [gpu_run(tmp_path, f"job{i}", 0.8, env) for i in range(2)]
    assert all(j.wait(timeout=30) == 0 for j in jobs)
    assert sorted(read(tmp_path / f"job{i}")[0] for i in range(2)) == ["5", "7"]


@pytest.mark.subprocess
def test_multi_gpu_job_takes_all_or_nothing(tmp_path, env):
    job = gpu_run(tmp_path, "pair", 0.0, env, "--gpus", "2")
    assert job.wait(timeout=30) == 0
    assert read(tmp_path / "pair")[0] == "0,1"


@pytest.mark.subprocess
def test_lock_released_when_killed(tmp_path, env):
    env = dict(env, AMC_FAKE_GPUS="0")
    victim = gpu_run(tmp_path, "victim", 60.0, env)
    time.sleep(0.8)
    victim.kill()
    victim.wait(timeout=10)
    after = gpu_run(tmp_path, "after", 0.0, env)
    assert after.wait(timeout=30) == 0
    assert read(tmp_path / "after")[0] == "0"


@pytest.mark.subprocess
def test_no_gpu_runs_on_cpu(tmp_path):
    env = {k: v for k, v in os.environ.items()}
    env["CUDA_VISIBLE_DEVICES"] = ""
    out = subprocess.run(
        [sys.executable, "-m", "amc", "gpu-run", "--", sys.executable, "-c", "print('ran')"],
        env=env, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert out.returncode == 0 and "ran" in out.stdout and "CPU" in out.stderr


def test_device_listing_and_lock_dir():
    assert gpu.visible_devices({"CUDA_VISIBLE_DEVICES": "2, 3"}) == ["2", "3"]
    assert gpu.visible_devices({"CUDA_VISIBLE_DEVICES": "-1"}) == []
    assert gpu.visible_devices({"AMC_FAKE_GPUS": "0,1"}) == ["0", "1"]
    assert gpu.default_lock_dir({"AMC_GPU_LOCK_DIR": "/x"}) == Path("/x")
    assert gpu.default_lock_dir({"AMC_GPU_LOCK_DIR": "/x", "SLURM_JOB_ID": "42"}) == Path("/x/slurm-42")
    with pytest.raises(gpu.AmcError, match="only 2 visible"):
        gpu.acquire(["0", "1"], 3, Path("/tmp"))
