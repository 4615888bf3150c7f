"""A throw-away single-node Slurm cluster for the tests (tests/test_slurm.py, ``make test-slurm``).

``SlurmCluster.start()`` installs Slurm and munge from Debian's packages when they are
missing (root only), writes a ``slurm.conf`` for one node on 127.0.0.1 with this machine's
CPUs and memory, starts ``munged``, ``slurmctld`` and ``slurmd`` with every file they
write (configuration, state, spool, logs, sockets) under one temporary folder, and waits
until ``sinfo`` shows the node idle. ``stop()`` cancels the jobs left, stops the daemons
and removes the folder. Anything that keeps the cluster from starting raises
``ClusterUnavailable`` with the reason and the daemons' logs.

Choices, each for a reason:

* **No accounting database.** The executor plugin reads job states either with ``sacct``
  (which needs ``slurmdbd`` and a MariaDB server) or with ``squeue --states=all``
  (executor setting ``status_command: squeue``); the latter sees finished jobs for
  ``MinJobAge`` seconds, which we set to an hour. That keeps MariaDB and slurmdbd (and
  their minute of installation) out of the test; the workflow itself does not care which
  command the plugin polls with. ``jobs()`` reads rule names and states the same way.
* **Fake GPUs.** The node declares ``Gres=gpu:4`` backed by four character devices that
  every Linux has (``/dev/null``, ``/dev/zero``, ...): Slurm needs one device file per GPU to
  number them and set ``CUDA_VISIBLE_DEVICES`` for a job, and without cgroups
  (``task/none``, ``proctrack/linuxproc``: this runs in containers) it never restricts
  access to them. GPU rules then request ``--gpus`` as on a real cluster and get their
  own device ids; torch finds no CUDA and runs on the CPU. Four, so that two jobs of two
  GPUs each can run side by side.
* **``SLURM_CONF`` put back for ``srun``.** Our ``slurm.conf`` is not at the compiled-in
  path (``/etc/slurm/slurm.conf``), so every Slurm command finds it through ``SLURM_CONF``.
  The ``slurm-jobstep`` executor plugin removes all ``SLURM_*`` variables but a few before
  it calls ``srun`` inside a job, ``SLURM_CONF`` included; a two-line ``srun`` wrapper
  first on ``PATH`` restores it. (On a real cluster the configuration is at the default
  path or fetched from the controller, and nothing is needed.)
* **Own ports and node name**, so two clusters (two test sessions) on one machine do not meet.
"""

from __future__ import annotations

import ctypes
import getpass
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

# Debian bookworm ships Slurm 22.05; slurm-wlm (the metapackage) would add recommends we do not use.
PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge")
COMMANDS = ("munged", "slurmctld", "slurmd", "sbatch", "srun", "squeue", "sinfo", "scancel", "scontrol")
NODE = "amcnode"
CPU_PARTITION, GPU_PARTITION = "cpu", "gpu"
FAKE_GPU_DEVICES = ("/dev/null", "/dev/zero", "/dev/full", "/dev/urandom")
MIN_JOB_AGE_S = 3600  # how long squeue --states=all shows a finished job


class ClusterUnavailable(RuntimeError):
    """The cluster cannot run here (no root, no packages, a daemon failed); the message says why."""


def missing_commands() -> list[str]:
    return [name for name in COMMANDS if shutil.which(name) is None]


def ensure_installed(timeout: float = 600) -> float:
    """Install the Debian packages when a command is missing; seconds spent (0 when nothing to do)."""
    missing = missing_commands()
    if not missing:
        return 0.0
    if os.geteuid() != 0:
        raise ClusterUnavailable(f"{', '.join(missing)} not installed and not root to apt-get install them")
    if shutil.which("apt-get") is None:
        raise ClusterUnavailable(f"{', '.join(missing)} not installed and no apt-get here")
    start = time.monotonic()
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for command in (
        ["apt-get", "update", "-qq"],
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *PACKAGES],
    ):
        try:
            result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise ClusterUnavailable(f"{' '.join(command)} took more than {timeout:.0f} s") from None
        if result.returncode != 0:
            raise ClusterUnavailable(
                f"{' '.join(command)} failed:\n{result.stdout[-2000:]}{result.stderr[-2000:]}"
            )
    if missing_commands():
        raise ClusterUnavailable(f"still missing after apt-get install: {', '.join(missing_commands())}")
    return time.monotonic() - start


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM when the test process dies (no daemon outlives a killed pytest)."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def node_hardware() -> dict[str, str]:
    """``slurmd -C``'s view of this machine: CPUs, sockets, cores, threads, RealMemory."""
    out = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, timeout=60).stdout
    fields = dict(re.findall(r"(\w+)=(\S+)", out.splitlines()[0] if out else ""))
    keys = ("CPUs", "Boards", "SocketsPerBoard", "CoresPerSocket", "ThreadsPerCore", "RealMemory")
    if not all(key in fields for key in keys):
        raise ClusterUnavailable(f"slurmd -C did not describe this machine: {out!r}")
    return {key: fields[key] for key in keys}


@dataclass
class Job:
    """One job as ``squeue --json --states=all`` shows it; ``rule`` from the executor plugin's comment."""

    id: int
    state: str
    partition: str
    account: str
    comment: str  # rule_<rule>[_wildcards_<values>], set by the executor plugin
    gpus: str  # tres_per_job, e.g. "gres:gpu:2" ("" without GPUs)
    cpus: int
    memory_mb: int
    time_limit_min: int | None
    output: str  # sbatch --output, as given (squeue does not fill in %j)

    @property
    def rule(self) -> str:
        match = re.match(r"rule_(.+?)(_wildcards_.*)?$", self.comment)
        return match.group(1) if match else ""

    @property
    def wildcards(self) -> str:
        return self.comment.partition("_wildcards_")[2]

    @property
    def log(self) -> Path:
        """The job's Slurm log file."""
        return Path(self.output.replace("%j", str(self.id)))


@dataclass
class SlurmCluster:
    root: Path
    hardware: dict[str, str]
    gpus: int = len(FAKE_GPU_DEVICES)
    account: str = "amc"
    install_seconds: float = 0.0  # spent installing the packages in start()
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    # ------------------------------------------------------------------ paths and environment

    @property
    def conf(self) -> Path:
        return self.root / "etc" / "slurm.conf"

    @property
    def cpus(self) -> int:
        return int(self.hardware["CPUs"])

    @property
    def memory_mb(self) -> int:
        return int(self.hardware["RealMemory"])

    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """``base`` (default os.environ) with this cluster's SLURM_CONF and the srun wrapper first on PATH."""
        env = dict(os.environ if base is None else base)
        env["SLURM_CONF"] = str(self.conf)
        env["PATH"] = f"{self.root / 'bin'}{os.pathsep}{env.get('PATH', '')}"
        return env

    def run(self, *command: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        result = subprocess.run(command, env=self.env(), capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed: {result.stderr.strip()}")
        return result

    def jobs(self) -> list[Job]:
        """Every job the controller still knows (finished ones for MinJobAge), oldest first."""
        listing = json.loads(self.run("squeue", "--json", "--states=all").stdout)["jobs"]
        jobs = [
            Job(
                id=job["job_id"],
                state=job["job_state"],
                partition=job["partition"],
                account=job["account"],
                comment=job["comment"],
                gpus=job["tres_per_job"],
                cpus=job["cpus"],
                memory_mb=job["memory_per_node"],
                time_limit_min=job["time_limit"],
                output=job["standard_output"],
            )
            for job in listing
        ]
        return sorted(jobs, key=lambda job: job.id)

    def logs(self, lines: int = 40) -> str:
        parts = []
        for path in sorted((self.root / "log").glob("*")):
            text = path.read_text(errors="replace").splitlines()[-lines:]
            parts.append(f"--- {path.name} (last {lines} lines)\n" + "\n".join(text))
        return "\n".join(parts)

    # ------------------------------------------------------------------ start

    @classmethod
    def start(cls, timeout: float = 60) -> SlurmCluster:
        """A running cluster with one idle node, or ClusterUnavailable (daemons stopped, folder removed)."""
        if os.geteuid() != 0:
            raise ClusterUnavailable("the test cluster's daemons run as root (like CI); not root here")
        install_seconds = ensure_installed()
        version = subprocess.run(["slurmd", "-V"], capture_output=True, text=True, timeout=60).stdout.strip()
        if not re.search(r" 22\.05\.", version):
            # jobs() reads squeue --json, whose layout changed in 23.02 (states as lists, numbers as dicts)
            raise ClusterUnavailable(
                f"the test cluster is written for Slurm 22.05 (Debian bookworm); found {version!r}"
            )
        root = Path(tempfile.mkdtemp(prefix="amc-slurm-"))
        root.chmod(0o755)  # munged wants its socket folder reachable by everyone
        cluster = cls(root=root, hardware=node_hardware(), install_seconds=install_seconds)
        try:
            cluster._write_files()
            cluster._start_daemons(timeout)
        except BaseException as error:
            logs = cluster.logs()
            cluster.stop()
            if isinstance(error, ClusterUnavailable):
                raise ClusterUnavailable(f"{error}\n{logs}") from None
            raise
        return cluster

    def _write_files(self) -> None:
        for sub in ("etc", "bin", "munge", "state", "spool", "log", "run"):
            (self.root / sub).mkdir(mode=0o755)
        key = self.root / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        hw = self.hardware
        node = " ".join(f"{k}={hw[k]}" for k in hw)
        gres_files = ",".join(FAKE_GPU_DEVICES[: self.gpus])
        r = self.root
        self.conf.write_text(
            f"""# Written by tests/slurm_cluster.py: one node on 127.0.0.1, no cgroups, no accounting.
ClusterName=amctest
SlurmctldHost={socket.gethostname()}(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={r}/munge/munge.socket.2
StateSaveLocation={r}/state
SlurmdSpoolDir={r}/spool
SlurmctldPidFile={r}/run/slurmctld.pid
SlurmdPidFile={r}/run/slurmd.pid
SlurmctldLogFile={r}/log/slurmctld.log
SlurmdLogFile={r}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SwitchType=switch/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2
ReturnToService=2
MinJobAge={MIN_JOB_AGE_S}
KillWait=5
MailProg=/bin/true
GresTypes=gpu
NodeName={NODE} NodeHostname={socket.gethostname()} NodeAddr=127.0.0.1 {node} Gres=gpu:{self.gpus} State=UNKNOWN
PartitionName={CPU_PARTITION} Nodes={NODE} Default=YES MaxTime=INFINITE State=UP
PartitionName={GPU_PARTITION} Nodes={NODE} MaxTime=INFINITE State=UP
"""
        )
        (self.conf.parent / "gres.conf").write_text(f"NodeName={NODE} Name=gpu File={gres_files}\n")
        wrapper = self.root / "bin" / "srun"
        wrapper.write_text(f'#!/bin/sh\nSLURM_CONF={self.conf} exec {shutil.which("srun")} "$@"\n')
        wrapper.chmod(0o755)

    def _spawn(self, name: str, *command: str) -> None:
        out = open(self.root / "log" / f"{name}.out", "wb")  # noqa: SIM115 - the daemon keeps it
        self.processes[name] = subprocess.Popen(
            command,
            env=self.env(),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=_die_with_parent,
        )
        out.close()

    def _start_daemons(self, timeout: float) -> None:
        r = self.root
        self._spawn(
            "munged",
            "munged", "--foreground", f"--key-file={r}/munge/munge.key", f"--socket={r}/munge/munge.socket.2",
            f"--pid-file={r}/munge/munged.pid", f"--seed-file={r}/munge/munged.seed",
            f"--log-file={r}/log/munged.log",
        )  # fmt: skip
        self._wait(lambda: (r / "munge" / "munge.socket.2").exists(), "munged's socket", timeout)
        self._spawn("slurmctld", "slurmctld", "-D", "-i")
        self._wait(lambda: self.run("scontrol", "ping", check=False).returncode == 0, "slurmctld", timeout)
        self._spawn("slurmd", "slurmd", "-D", "-N", NODE)
        self._wait(self._node_idle, f"node {NODE} idle in sinfo", timeout)
        log.info("Slurm cluster up in %s: %s CPUs, %s MB, %d GPUs", r, self.cpus, self.memory_mb, self.gpus)

    def _node_idle(self) -> bool:
        state = self.run("sinfo", "--noheader", "--node", NODE, "--format=%T", check=False).stdout
        return state.strip() == "idle"

    def _wait(self, ready, what: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            dead = [name for name, p in self.processes.items() if p.poll() is not None]
            if dead:
                raise ClusterUnavailable(f"{', '.join(dead)} exited while waiting for {what}")
            if time.monotonic() > deadline:
                raise ClusterUnavailable(f"no {what} within {timeout:.0f} s")
            time.sleep(0.5)

    # ------------------------------------------------------------------ stop

    def stop(self, timeout: float = 30) -> None:
        """Cancel this cluster's jobs, stop its daemons (last started first), remove its folder."""
        if "slurmctld" in self.processes and self.processes["slurmctld"].poll() is None:
            self.run("scancel", "--user", getpass.getuser(), check=False)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and self._active_jobs():
                time.sleep(0.5)
            if "slurmd" in self.processes and self.processes["slurmd"].poll() is None:
                self._kill_job_processes()
        for name in ("slurmd", "slurmctld", "munged"):
            process = self.processes.get(name)
            if process is None or process.poll() is not None:
                continue
            process.terminate()
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        shutil.rmtree(self.root, ignore_errors=True)

    def _active_jobs(self) -> list[str]:
        out = self.run("squeue", "--noheader", "--states=PENDING,RUNNING,COMPLETING,SUSPENDED", "--format=%i",
                       check=False).stdout  # fmt: skip
        return out.split()

    def _kill_job_processes(self) -> None:
        """Job steps still alive after scancel: kill them by the pids slurmd gives (they outlive slurmd)."""
        out = self.run("scontrol", "listpids", check=False).stdout
        pids = [
            int(line.split()[0])
            for line in out.splitlines()[1:]
            if line.split() and line.split()[0].isdigit()
        ]
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if pids:
            log.warning("killed %d job processes left after scancel: %s", len(pids), pids)

    def __enter__(self) -> SlurmCluster:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
