"""``amc gpu-run``: run a command on GPUs that no other ``gpu-run`` job holds.

Snakemake counts ``gpu`` as a resource (``--resources gpu=4``) but does not say
WHICH device a job gets. Every GPU rule of the workflow therefore starts its
command as ``amc gpu-run [--gpus N] -- COMMAND ...``, which

1. lists the devices it may use: the ids in ``CUDA_VISIBLE_DEVICES`` when that is
   set (so a scheduler's or a person's choice is honoured), else ``AMC_FAKE_GPUS``
   (a comma-separated list, for tests), else ``nvidia-smi -L``;
2. takes N of them with an exclusive ``fcntl.flock`` on one lock file per device
   id in the lock folder (``AMC_GPU_LOCK_DIR``, default ``$XDG_RUNTIME_DIR/amc-gpu-locks``
   or ``/tmp/amc-gpu-locks``), all or nothing, waiting (with a log line) while
   too few are free;
3. replaces itself with COMMAND (``exec``) with ``CUDA_VISIBLE_DEVICES`` set to
   the devices taken. The lock file descriptors stay open in COMMAND, so the
   locks are held exactly as long as COMMAND runs and are released by the kernel
   when it ends, however it ends (exit, crash, ``kill -9``).

With no GPU at all the command runs on the CPU (a log line says so). Under Slurm
the scheduler already gives each job its own devices, all of which may be
called ``0`` inside the job, so the locks live in a per-job subfolder there.
"""

from __future__ import annotations

import argparse
import fcntl
import logging
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from amc.cli import nonnegative_float, nonnegative_int, positive_float
from amc.io import AmcError

log = logging.getLogger("amc.gpu")

LOCK_DIR_ENV = "AMC_GPU_LOCK_DIR"
FAKE_GPUS_ENV = "AMC_FAKE_GPUS"


def _split_ids(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


def visible_devices(environ: dict[str, str] | None = None) -> list[str]:
    """The device ids this process may use, in order (empty list: no GPU).

    ``CUDA_VISIBLE_DEVICES`` wins when set; an empty value or ``-1`` means "no
    GPU", as it does for CUDA. Ids are kept as strings: they may be indices,
    ``GPU-<uuid>`` or ``MIG-<uuid>``.
    """
    environ = os.environ if environ is None else environ
    if "CUDA_VISIBLE_DEVICES" in environ:
        ids = _split_ids(environ["CUDA_VISIBLE_DEVICES"])
        # CUDA stops at the first invalid id; "-1" is the usual way to hide all devices.
        kept = []
        for device in ids:
            if device.startswith("-"):
                break
            kept.append(device)
        return kept
    if FAKE_GPUS_ENV in environ:
        return _split_ids(environ[FAKE_GPUS_ENV])
    return [str(i) for i in range(_count_devices())]


def _count_devices() -> int:
    """Number of NVIDIA devices on this machine, without importing torch when avoidable."""
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=30, check=False)
        except (OSError, subprocess.SubprocessError):
            out = None
        if out is not None and out.returncode == 0:
            return sum(1 for line in out.stdout.splitlines() if line.startswith("GPU "))
    if not Path("/dev/nvidiactl").exists():
        return 0
    try:  # a driver without nvidia-smi: ask torch (slow import, rare case)
        import torch

        return int(torch.cuda.device_count())
    except Exception:  # noqa: BLE001 - any failure here means "no usable GPU"
        return 0


def default_lock_dir(environ: dict[str, str] | None = None) -> Path:
    environ = os.environ if environ is None else environ
    if environ.get(LOCK_DIR_ENV):
        base = Path(environ[LOCK_DIR_ENV])
    elif environ.get("XDG_RUNTIME_DIR"):
        base = Path(environ["XDG_RUNTIME_DIR"]) / "amc-gpu-locks"
    else:
        base = Path("/tmp/amc-gpu-locks")
    # Inside a Slurm job the visible ids are the job's own (often "0" in every job).
    if environ.get("SLURM_JOB_ID"):
        base = base / f"slurm-{environ['SLURM_JOB_ID']}"
    return base


def _lock_path(lock_dir: Path, device: str) -> Path:
    return lock_dir / f"gpu-{re.sub(r'[^A-Za-z0-9_.-]', '_', device)}.lock"


def _ensure_lock_dir(lock_dir: Path) -> None:
    if lock_dir.is_dir():
        return
    lock_dir.mkdir(parents=True, exist_ok=True)
    try:  # shared by every user of the machine, like /tmp
        lock_dir.chmod(0o1777)
    except OSError:
        pass


def _try_lock(path: Path) -> int | None:
    """Open ``path`` and take an exclusive, non-blocking flock; the fd, or None if taken."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except PermissionError:  # another user's lock file: flock works on a read-only fd too
        fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def acquire(
    devices: list[str], count: int, lock_dir: Path, poll: float = 2.0, timeout: float | None = None
) -> tuple[list[str], list[int]]:
    """Lock ``count`` free devices out of ``devices``, waiting while too few are free.

    All or nothing: a job needing several GPUs never holds some while waiting for
    more, so two such jobs cannot block each other. Returns (ids, lock fds).
    """
    if count > len(devices):
        raise AmcError(
            f"gpu-run: {count} GPU(s) asked for but only {len(devices)} visible ({','.join(devices) or 'none'})"
        )
    _ensure_lock_dir(lock_dir)
    start = time.monotonic()
    waiting_logged = False
    while True:
        taken: list[tuple[str, int]] = []
        for device in devices:
            fd = _try_lock(_lock_path(lock_dir, device))
            if fd is not None:
                taken.append((device, fd))
                if len(taken) == count:
                    return [d for d, _ in taken], [fd for _, fd in taken]
        for _, fd in taken:
            os.close(fd)
        if not waiting_logged:
            log.info(
                "waiting for %d free GPU(s): all of %s are taken (locks in %s)",
                count,
                ",".join(devices),
                lock_dir,
            )
            waiting_logged = True
        if timeout is not None and time.monotonic() - start > timeout:
            raise AmcError(f"gpu-run: no {count} free GPU(s) within {timeout:g} s")
        time.sleep(poll)


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--gpus", type=nonnegative_int, default=1, help="devices the command needs (default 1; 0 = CPU)"
    )
    parser.add_argument(
        "--lock-dir",
        type=Path,
        default=None,
        help=f"folder of the per-device lock files (default ${LOCK_DIR_ENV}, $XDG_RUNTIME_DIR/amc-gpu-locks or /tmp/amc-gpu-locks)",
    )
    parser.add_argument(
        "--poll", type=positive_float, default=2.0, help="seconds between tries while waiting"
    )
    parser.add_argument(
        "--timeout", type=nonnegative_float, default=None, help="give up after this many seconds of waiting"
    )
    parser.add_argument("cmd", nargs=argparse.REMAINDER, help="-- COMMAND [ARGS ...]")


def run(args: argparse.Namespace) -> int:
    cmd = list(args.cmd)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not cmd:
        raise AmcError("gpu-run: no command given (usage: amc gpu-run [--gpus N] -- COMMAND ...)")
    if args.gpus < 0:
        raise AmcError("gpu-run: --gpus must be >= 0")
    env = dict(os.environ)
    devices = visible_devices(env)
    if args.gpus == 0:
        log.info("gpu-run: --gpus 0, running on the CPU: %s", shlex.join(cmd))
    elif not devices:
        log.info("gpu-run: no GPU found, running on the CPU: %s", shlex.join(cmd))
    else:
        lock_dir = args.lock_dir or default_lock_dir(env)
        ids, fds = acquire(devices, args.gpus, lock_dir, poll=args.poll, timeout=args.timeout)
        for fd in fds:  # the command inherits the locks; they go when it ends
            os.set_inheritable(fd, True)
        env["CUDA_VISIBLE_DEVICES"] = ",".join(ids)
        log.info("gpu-run: took GPU %s (locks in %s): %s", ",".join(ids), lock_dir, shlex.join(cmd))
    sys.stdout.flush()
    sys.stderr.flush()
    for handler in logging.getLogger().handlers:
        handler.flush()
    try:
        os.execvpe(cmd[0], cmd, env)
    except FileNotFoundError:
        raise AmcError(f"gpu-run: command not found: {cmd[0]}") from None
    return 0  # not reached
