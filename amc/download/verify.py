"""Verification: the expected size and sha256 of a file (the manifest's, else the lock file's) and
the lock file ``DEST/checksums.lock.json`` that the first verified download of an artifact fills in."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from amc.download.errors import DownloadError
from amc.download.manifest import SHA256_RE, Artifact
from amc.io import DataError, atomic_write_json, read_json, sha256_file

log = logging.getLogger(__name__)

LOCK_FILENAME = "checksums.lock.json"


@contextlib.contextmanager
def _locked(dest: Path) -> Iterator[None]:
    """Serialise read-modify-write of the lock file between parallel download jobs."""
    dest.mkdir(parents=True, exist_ok=True)
    with open(dest / f".{LOCK_FILENAME}.flock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def read_lock(dest: str | os.PathLike) -> dict[str, dict]:
    """The recorded checksums by artifact name (empty when there is no lock file)."""
    path = Path(dest) / LOCK_FILENAME
    if not path.exists():
        return {}
    data = read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("artifacts"), dict):
        raise DataError(f"{path}: expected a mapping with an 'artifacts' mapping")
    for name, entry in data["artifacts"].items():
        size, sha256 = (entry.get("size"), entry.get("sha256")) if isinstance(entry, dict) else (None, None)
        if (
            not isinstance(entry, dict)
            or not isinstance(entry.get("filename"), str)
            or (size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 0))
            or (sha256 is not None and (not isinstance(sha256, str) or not SHA256_RE.match(sha256)))
        ):
            raise DataError(
                f"{path}: entry {name!r} must hold a filename, a size (bytes) and a sha256 (64 hex digits); "
                f"got {entry!r}. Remove the entry to record the file again."
            )
    return data["artifacts"]


def _record_lock(dest: Path, artifact: Artifact, size: int, sha256: str, url: str | None) -> None:
    with _locked(dest):
        entries = read_lock(dest)
        previous = entries.get(artifact.name, {}).get("sha256")
        if previous not in (None, sha256):
            log.warning("%s: the lock file held sha256 %s; replaced by %s", artifact.name, previous, sha256)
        entries[artifact.name] = {
            "filename": artifact.filename,
            "size": size,
            "sha256": sha256,
            "url": url,
            "recorded": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        atomic_write_json(dest / LOCK_FILENAME, {"version": 1, "artifacts": entries})
    log.info("%s: recorded size %d and sha256 %s in %s", artifact.name, size, sha256, dest / LOCK_FILENAME)


@dataclass(frozen=True)
class _Expected:
    size: int | None
    sha256: str | None
    source: str  # where the values come from, for error messages


def _expected(artifact: Artifact, dest: Path, use_lock: bool = True) -> _Expected:
    """Published values win; otherwise what the first verified download recorded (unless ``use_lock``
    is False: ``--update-lock`` replaces the record)."""
    if artifact.sha256 is not None:
        return _Expected(artifact.size, artifact.sha256, "the manifest")
    entry = read_lock(dest).get(artifact.name) if use_lock else None
    if entry and entry.get("filename") == artifact.filename:
        size = artifact.size if artifact.size is not None else entry.get("size")
        return _Expected(size, entry.get("sha256"), f"the lock file {dest / LOCK_FILENAME}")
    return _Expected(artifact.size, None, "the manifest")


def _mismatch_hint(expected: _Expected, artifact: Artifact) -> str:
    if expected.source.startswith("the lock file"):
        return (
            f" If the upstream file changed on purpose, remove the entry {artifact.name!r} "
            f"from {expected.source.removeprefix('the lock file ')}."
        )
    return ""


def _verify_file(path: Path, artifact: Artifact, expected: _Expected) -> tuple[int, str]:
    """Size and sha256 of ``path``; a DownloadError when either disagrees with ``expected``."""
    size = path.stat().st_size
    if expected.size is not None and size != expected.size:
        raise DownloadError(
            f"{artifact.name}: {path} has {size} bytes but {expected.source} says {expected.size}."
            + _mismatch_hint(expected, artifact)
        )
    sha256 = sha256_file(path)
    if expected.sha256 is not None and sha256 != expected.sha256:
        raise DownloadError(
            f"{artifact.name}: {path} has sha256 {sha256} but {expected.source} says {expected.sha256}."
            + _mismatch_hint(expected, artifact)
        )
    return size, sha256


def _verify_into_place(
    staging: Path, target: Path, artifact: Artifact, expected: _Expected
) -> tuple[int, str]:
    """Verify ``staging`` and rename it to ``target``; a file that fails is deleted."""
    try:
        size, sha256 = _verify_file(staging, artifact, expected)
    except DownloadError:
        staging.unlink(missing_ok=True)
        raise
    os.replace(staging, target)
    log.info("%s: verified %s (%d bytes, sha256 %s)", artifact.name, target, size, sha256)
    return size, sha256
