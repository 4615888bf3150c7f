"""Safe unpacking: no member lands outside the destination or on the downloader's own files; a
refused archive is moved aside and its checksum leaves the lock file."""

from __future__ import annotations

import gzip
import logging
import os
import posixpath
import shutil
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path

from amc.download.errors import ArchiveError, UnsafeArchiveError
from amc.download.manifest import Artifact, missing_outputs
from amc.download.verify import LOCK_FILENAME, _locked, read_lock
from amc.io import AmcError, DataError, atomic_write_json, confined, read_json

log = logging.getLogger(__name__)


def _check_member_path(archive: Path, name: str) -> None:
    try:
        confined(".", name, "member")
    except AmcError:
        raise UnsafeArchiveError(
            f"{archive}: refusing member {name!r}: an absolute path or one that escapes the destination"
        ) from None


def _escapes(path: str) -> bool:
    path = posixpath.normpath(path)
    return path.startswith("/") or path == ".." or path.startswith("../")


def _check_tar_member(archive: Path, member: tarfile.TarInfo) -> None:
    _check_member_path(archive, member.name)
    if member.issym():
        # A symlink's target is relative to the folder holding the link.
        if _escapes(posixpath.join(posixpath.dirname(member.name), member.linkname)):
            raise UnsafeArchiveError(
                f"{archive}: refusing member {member.name!r}: symlink to {member.linkname!r} points outside the destination"
            )
    elif member.islnk():
        # A hard link's target is a path inside the archive.
        if _escapes(member.linkname):
            raise UnsafeArchiveError(
                f"{archive}: refusing member {member.name!r}: hard link to {member.linkname!r} points outside the destination"
            )
    elif not (member.isfile() or member.isdir()):
        raise UnsafeArchiveError(f"{archive}: refusing member {member.name!r}: not a file, folder or link")


# A member under a path another member made a file (or the reverse): the archive's fault, not the disk's.
_MEMBER_CONFLICTS = (NotADirectoryError, IsADirectoryError, FileExistsError)


def _extract_zip(archive: Path, into: Path) -> None:
    try:
        with zipfile.ZipFile(archive) as zf:
            # Check every name before writing anything. (zipfile writes symlink entries
            # as small regular files, so links cannot escape from a zip.)
            for info in zf.infolist():
                _check_member_path(archive, info.filename)
            zf.extractall(into)
    except zipfile.BadZipFile as error:
        raise ArchiveError(f"{archive}: not a valid zip archive ({error})") from None
    except _MEMBER_CONFLICTS as error:
        raise ArchiveError(f"{archive}: members that contradict each other ({error})") from None


def _extract_tar(archive: Path, into: Path) -> None:
    def checked(tar: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
        for member in tar:
            _check_tar_member(archive, member)
            yield member

    # The 'data' filter (Python >= 3.11.4) is a second line of defence behind our checks.
    options = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
    filter_error = getattr(tarfile, "FilterError", ())  # () catches nothing on older Pythons
    try:
        with tarfile.open(archive, "r:*") as tar:
            tar.extractall(into, members=checked(tar), **options)
    except filter_error as error:
        name = getattr(error.tarinfo, "name", "?")
        raise UnsafeArchiveError(f"{archive}: refusing member {name!r}: {error}") from None
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as error:
        raise ArchiveError(f"{archive}: not a valid tar archive ({error})") from None
    except _MEMBER_CONFLICTS as error:
        raise ArchiveError(f"{archive}: members that contradict each other ({error})") from None


def _archive_kind(archive: Path, declared: str) -> str:
    if declared in ("tar", "tar.gz"):
        return "tar"
    if declared == "zip":
        return "zip"
    if zipfile.is_zipfile(archive):
        return "zip"
    if tarfile.is_tarfile(archive):
        return "tar"
    raise ArchiveError(f"{archive}: neither a zip nor a tar archive")


def _marker(artifact: Artifact, dest: Path) -> Path:
    return dest / str(artifact.unpack_to) / f".{artifact.name}.unpacked"


def _marker_matches(artifact: Artifact, dest: Path, sha256: str | None) -> bool:
    marker = _marker(artifact, dest)
    if not marker.exists():
        return False
    try:
        recorded = read_json(marker)
    except DataError:
        return False
    return isinstance(recorded, dict) and (sha256 is None or recorded.get("sha256") == sha256)


def is_downloader_file(name: str) -> bool:
    """Whether a file name is one the downloader keeps for itself: the lock file and its flock,
    partial downloads, unpack markers and temporary folders, refused archives."""
    return (
        name == LOCK_FILENAME
        or name.endswith((".part", ".flock", ".unpacked", ".refused"))
        or (name.startswith(".") and (".unpacking-" in name or ".gdrive" in name))
    )


def _check_entry(archive: Path, entry: str, target: Path, protected: list[Path]) -> None:
    """Refuse a top-level entry that would replace the downloader's own files (module docstring)."""
    if is_downloader_file(entry):
        raise UnsafeArchiveError(
            f"{archive}: refusing member {entry!r}: it is named like the downloader's own files"
        )
    for path in protected:
        if path == target or target in path.parents:
            raise UnsafeArchiveError(f"{archive}: refusing member {entry!r}: it would replace {path}")
    if target.is_dir() and not target.is_symlink():
        for folder, _dirs, files in os.walk(target):
            owned = [f for f in files if is_downloader_file(f)]
            if owned:
                raise UnsafeArchiveError(
                    f"{archive}: refusing member {entry!r}: replacing {target} would delete {Path(folder) / owned[0]}"
                )


def unpack_archive(
    archive: Path, into: Path, *, kind: str = "auto", name: str = "archive", protected: list[Path] = ()
) -> list[str]:
    """Extract ``archive`` into the folder ``into``, refusing members that would escape it.

    Extraction happens in a temporary folder inside ``into``; only a complete
    extraction is moved into place (its top-level entries replace any older ones). No entry
    may replace the downloader's own files: names like them (:func:`is_downloader_file`), the
    ``protected`` paths (the archive itself, the lock file) or a folder holding either.
    Returns the top-level entries. Writes no marker: see :func:`download`.
    """
    into.mkdir(parents=True, exist_ok=True)
    for stale in into.glob(f".{name}.unpacking-*"):  # left by an interrupted run
        shutil.rmtree(stale, ignore_errors=True)
    protected = [Path(os.path.abspath(p)) for p in (archive, *protected)]
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.unpacking-", dir=into))
    try:
        if _archive_kind(archive, kind) == "zip":
            _extract_zip(archive, tmp)
        else:
            _extract_tar(archive, tmp)
        entries = sorted(os.listdir(tmp))
        for entry in entries:  # every entry is checked before the first one moves
            _check_entry(archive, entry, Path(os.path.abspath(into / entry)), protected)
        for entry in entries:
            target = into / entry
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            elif target.exists() or target.is_symlink():
                target.unlink()
            os.replace(tmp / entry, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return entries


def _unpack(
    artifact: Artifact, dest: Path, archive: Path, sha256: str, others: Iterable[Artifact] = ()
) -> bool:
    """Unpack unless the marker says this very archive was unpacked and its outputs exist.

    ``others``: the manifest's other artifacts, whose downloaded files no entry may replace."""
    if _marker_matches(artifact, dest, sha256) and missing_outputs(artifact, dest) == []:
        log.info("%s: already unpacked into %s", artifact.name, dest / str(artifact.unpack_to))
        return False
    into = dest / str(artifact.unpack_to)
    _marker(artifact, dest).unlink(missing_ok=True)
    log.info("%s: unpacking %s into %s", artifact.name, archive, into)
    entries = unpack_archive(
        archive,
        into,
        kind=artifact.unpack,
        name=artifact.name,
        protected=[
            dest / LOCK_FILENAME,
            dest / f".{LOCK_FILENAME}.flock",
            _marker(artifact, dest),
            *(dest / other.filename for other in others if other.name != artifact.name),
        ],
    )
    atomic_write_json(
        _marker(artifact, dest),
        {"archive": artifact.filename, "sha256": sha256, "entries": entries},
    )
    return True


def _refuse(artifact: Artifact, dest: Path, archive: Path, sha256: str, error: ArchiveError) -> ArchiveError:
    """A refused archive is neither kept where a good one goes nor trusted: it is moved aside to
    ``<filename>.refused`` and its checksum leaves the lock file. Returns the error to raise."""
    aside = archive.with_name(archive.name + ".refused")
    os.replace(archive, aside)
    with _locked(dest):
        entries = read_lock(dest)
        if entries.get(artifact.name, {}).get("sha256") == sha256:
            del entries[artifact.name]
            atomic_write_json(dest / LOCK_FILENAME, {"version": 1, "artifacts": entries})
    return type(error)(f"{error}. The archive was moved aside to {aside} and is not recorded as trusted.")
