"""``amc download``: fetch, verify and unpack the datasets and checkpoints of the manifest.

The manifest (``amc/resources/manifest.yaml``, shipped with the package, or another one
given with ``--manifest``) lists every artifact: its mirrors, the file name under the
destination folder, the size and sha256 where they are published, how to unpack
it and which paths it produces. One artifact goes through these steps:

1. download ``<filename>.part`` from the first mirror that works, resuming a
   partial file with an HTTP Range request and retrying timeouts, connection
   errors and 5xx answers with exponential back-off;
2. check the size and sha256 (from the manifest, else from the lock file
   ``DEST/checksums.lock.json`` that the first verified download fills in);
3. rename the ``.part`` into place (a file that fails the check is deleted,
   never left where a complete one would be);
4. unpack it safely (no member may land outside the destination) into a
   temporary folder, move the result into place and write a marker file.

Everything is idempotent: an artifact that is already present and verifies is
skipped. Artifacts that cannot be downloaded (the Flickr30k images) are
"manual": the command stops with exit status 3 and says where to get the file
and where to put it, and succeeds once it is there.

An artifact has one source:

* ``urls``: HTTP(S) mirrors, fetched by the standard library (``urllib.request``);
* ``google_drive``: a file inside a public Google Drive folder (the AMC authors'
  checkpoints and VG annotations). Only the folder links are public, so gdown lists
  the folder to find the file's id and then downloads it, handling Google's
  confirmation pages and large-file redirects itself. When that fails (quota
  exceeded, file removed, no network) the command stops like a manual artifact,
  naming the folder link, the file and where to put it;
* ``local``: a file on this machine (relative paths from the working directory),
  copied in: the demo's stand-in for a released checkpoint;
* ``manual``: instructions only.
"""

from __future__ import annotations

import contextlib
import fcntl
import gzip
import http.client
import logging
import os
import posixpath
import re
import shutil
import tarfile
import tempfile
import threading
import time
import urllib.error
import urllib.request
import zipfile
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.resources.abc import Traversable
from pathlib import Path

from tqdm import tqdm

from amc.cli import nonnegative_int, positive_float
from amc.io import (
    NAME_RULE,
    AmcError,
    DataError,
    atomic_write_json,
    check_outputs,
    confined,
    is_name,
    read_json,
    read_yaml,
    sha256_file,
)
from amc.resources import MANIFEST, resource

log = logging.getLogger(__name__)

DEFAULT_MANIFEST = resource(MANIFEST)  # amc/resources/manifest.yaml, package data
LOCK_FILENAME = "checksums.lock.json"
UNPACK_KINDS = ("none", "zip", "tar", "tar.gz", "auto")
USER_AGENT = "amc-bench-downloader/0.1 (Python urllib)"
CHUNK_SIZE = 1 << 20
# Without a progress bar (--no-progress, as the workflow runs it: its log is a file), a line with
# the bytes so far, the rate and the time left is logged this often.
PROGRESS_LOG_INTERVAL_S = 30.0
MAX_BACKOFF_S = 60.0
EXIT_MANUAL = 3  # exit status of `amc download` when a manual artifact is missing

_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_CONTENT_RANGE_RE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")


# --------------------------------------------------------------------------- errors


class ManifestError(DataError):
    """The manifest is malformed; the message names the file and the entry."""


class DownloadError(AmcError):
    """An artifact could not be downloaded or verified; the message says why and where."""


class ArchiveError(AmcError):
    """An archive that is refused: not a valid archive, or unsafe to unpack (see UnsafeArchiveError)."""


class UnsafeArchiveError(ArchiveError):
    """An archive member would land outside the destination or on the downloader's own files;
    names the archive and member."""


class ManualDownloadRequired(AmcError):
    """A manual artifact is missing (or Google Drive refused it): the message says where to get it
    and where to put it."""


# --------------------------------------------------------------------------- manifest


@dataclass(frozen=True)
class GoogleDriveFile:
    """A file inside a public Google Drive folder: the folder's link and the file's name in it."""

    folder: str
    file: str


@dataclass(frozen=True)
class Artifact:
    """One entry of the manifest. Paths are relative to the destination folder.

    Exactly one source: ``urls``, ``google_drive``, ``local`` or ``manual``.
    """

    name: str
    urls: tuple[str, ...]
    filename: str
    size: int | None
    sha256: str | None
    unpack: str
    unpack_to: str | None
    produces: tuple[str, ...]
    description: str
    license: str
    manual: str | None = None  # instructions, for artifacts without a URL
    google_drive: GoogleDriveFile | None = None
    local: str | None = None  # a file on this machine, copied in

    @property
    def is_manual(self) -> bool:
        return self.manual is not None

    @property
    def source(self) -> str:
        """'urls', 'google_drive', 'local' or 'manual'."""
        if self.google_drive is not None:
            return "google_drive"
        if self.local is not None:
            return "local"
        return "manual" if self.is_manual else "urls"


@dataclass
class DownloadResult:
    name: str
    path: Path | None  # the downloaded file (None: a manual artifact supplied already unpacked)
    size: int | None
    sha256: str | None
    url: str | None = None  # the mirror it came from; None when nothing was fetched
    downloaded: bool = False
    unpacked: bool = False
    produces: list[Path] = field(default_factory=list)


_FIELDS = {
    "name",
    "urls",
    "filename",
    "size",
    "sha256",
    "unpack",
    "unpack_to",
    "produces",
    "description",
    "license",
    "manual",
    "google_drive",
    "local",
}
_GOOGLE_DRIVE_FOLDER_RE = re.compile(
    r"^https://drive\.google\.com/drive/(?:u/\d+/)?folders/[A-Za-z0-9_-]+(?:\?.*)?$"
)


def _check_relative_path(value: object, what: str, where: str) -> str:
    """A relative POSIX path that stays inside the destination ('.' allowed)."""
    if not isinstance(value, str) or not value.strip():
        raise ManifestError(f"{where}: '{what}' must be a non-empty path, got {value!r}")
    try:
        confined(".", value, where)
    except AmcError:
        raise ManifestError(
            f"{where}: '{what}' must be a relative path inside the destination, got {value!r}"
        ) from None
    return posixpath.normpath(value)


def _parse_artifact(raw: object, where: str) -> Artifact:
    if not isinstance(raw, dict):
        raise ManifestError(f"{where}: expected a mapping, got {type(raw).__name__}")
    name = raw.get("name")
    if not is_name(name):
        raise ManifestError(f"{where}: 'name' {name!r} is not a name ({NAME_RULE})")
    where = f"{where} ({name})"
    unknown = sorted(set(raw) - _FIELDS)
    if unknown:
        raise ManifestError(f"{where}: unknown field(s) {', '.join(unknown)}")

    for key in ("filename", "unpack", "produces", "description", "license"):
        if key not in raw:
            raise ManifestError(f"{where}: missing field '{key}'")

    urls = raw.get("urls") or []
    if not isinstance(urls, list) or not all(isinstance(u, str) for u in urls):
        raise ManifestError(f"{where}: 'urls' must be a list of URLs")
    for url in urls:
        if not url.startswith(("http://", "https://")):
            raise ManifestError(f"{where}: URL {url!r} is not http:// or https://")
    manual = raw.get("manual")
    if manual is not None and (not isinstance(manual, str) or not manual.strip()):
        raise ManifestError(f"{where}: 'manual' must be the instructions (text)")
    google_drive = _parse_google_drive(raw.get("google_drive"), where)
    local = raw.get("local")
    if local is not None and (not isinstance(local, str) or not local.strip() or "\0" in local):
        raise ManifestError(f"{where}: 'local' must be the path of a file on this machine, got {local!r}")
    sources = [bool(urls), manual is not None, google_drive is not None, local is not None]
    if sum(sources) != 1:
        raise ManifestError(
            f"{where}: give exactly one source: 'urls' (a download), 'google_drive' (a file in a "
            "Google Drive folder), 'local' (a file on this machine) or 'manual' (instructions)"
        )

    size = raw.get("size")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 0):
        raise ManifestError(f"{where}: 'size' must be a number of bytes or null, got {size!r}")
    sha256 = raw.get("sha256")
    if sha256 is not None:
        if not isinstance(sha256, str) or not _SHA256_RE.match(sha256.lower()):
            raise ManifestError(f"{where}: 'sha256' must be 64 hex digits or null, got {sha256!r}")
        sha256 = sha256.lower()

    unpack = raw["unpack"]
    if unpack not in UNPACK_KINDS:
        raise ManifestError(f"{where}: 'unpack' must be one of {', '.join(UNPACK_KINDS)}, got {unpack!r}")
    unpack_to = raw.get("unpack_to")
    if unpack != "none":
        if unpack_to is None:
            raise ManifestError(f"{where}: 'unpack_to' is needed when 'unpack' is {unpack!r}")
        unpack_to = _check_relative_path(unpack_to, "unpack_to", where)
    elif unpack_to is not None:
        unpack_to = _check_relative_path(unpack_to, "unpack_to", where)

    produces = raw["produces"]
    if not isinstance(produces, list) or not produces:
        raise ManifestError(f"{where}: 'produces' must be a non-empty list of paths")
    for key in ("description", "license"):
        if not isinstance(raw[key], str) or not raw[key].strip():
            raise ManifestError(f"{where}: '{key}' must be non-empty text")

    return Artifact(
        name=name,
        urls=tuple(urls),
        filename=_check_relative_path(raw["filename"], "filename", where),
        size=size,
        sha256=sha256,
        unpack=unpack,
        unpack_to=unpack_to,
        produces=tuple(_check_relative_path(p, "produces", where) for p in produces),
        description=raw["description"].strip(),
        license=raw["license"].strip(),
        manual=manual.strip() if manual else None,
        google_drive=google_drive,
        local=local,
    )


def _parse_google_drive(raw: object, where: str) -> GoogleDriveFile | None:
    if raw is None:
        return None
    if not isinstance(raw, dict) or set(raw) != {"folder", "file"}:
        raise ManifestError(f"{where}: 'google_drive' must be a mapping with 'folder' (its link) and 'file'")
    folder, name = raw["folder"], raw["file"]
    if not isinstance(folder, str) or not _GOOGLE_DRIVE_FOLDER_RE.match(folder):
        raise ManifestError(
            f"{where}: google_drive.folder must be a link https://drive.google.com/drive/folders/<id>, "
            f"got {folder!r}"
        )
    if not isinstance(name, str) or not name.strip() or "/" in name or "\\" in name or name in (".", ".."):
        raise ManifestError(f"{where}: google_drive.file must be a file name inside the folder, got {name!r}")
    return GoogleDriveFile(folder, name)


def load_manifest(path: str | os.PathLike | Traversable = DEFAULT_MANIFEST) -> dict[str, Artifact]:
    """Read and validate a manifest (a path, or the shipped one); returns the artifacts by name, in file order."""
    path = Path(path) if isinstance(path, str | os.PathLike) else path
    try:
        data = read_yaml(path, "manifest")
    except DataError as error:
        raise ManifestError(str(error)) from None
    if not isinstance(data, dict) or not isinstance(data.get("artifacts"), list):
        raise ManifestError(f"{path}: expected a mapping with an 'artifacts' list")
    artifacts: dict[str, Artifact] = {}
    for index, raw in enumerate(data["artifacts"], start=1):
        artifact = _parse_artifact(raw, f"{path}: artifact #{index}")
        if artifact.name in artifacts:
            raise ManifestError(f"{path}: artifact #{index}: name {artifact.name!r} appears twice")
        artifacts[artifact.name] = artifact
    return artifacts


# --------------------------------------------------------------------------- lock file


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
            or (sha256 is not None and (not isinstance(sha256, str) or not _SHA256_RE.match(sha256)))
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


# --------------------------------------------------------------------------- progress lines


def _format_duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


class _ProgressLog:
    """Logs ``NAME: 1.2 GiB of 13.0 GiB (9%), 12.3 MiB/s, about 17 min left`` at most once per
    ``interval`` seconds: progress a person can follow in a log file, where no bar is drawn.
    The rate is that of the last interval; without a known total there is no percentage or ETA."""

    def __init__(
        self, desc: str, total: int | None, done: int, interval: float | None = None, clock=time.monotonic
    ) -> None:
        self.desc, self.total, self.done, self.clock = desc, total, done, clock
        self.interval = PROGRESS_LOG_INTERVAL_S if interval is None else interval
        self._mark_time, self._mark_bytes = clock(), done

    def update(self, received: int) -> None:
        """``received`` more bytes arrived; log if the interval has passed."""
        self.report(self.done + received)

    def report(self, done: int) -> None:
        """``done`` bytes so far; log if the interval has passed."""
        self.done = done
        now = self.clock()
        elapsed = now - self._mark_time
        if elapsed < self.interval:
            return
        rate = (done - self._mark_bytes) / elapsed if elapsed > 0 else 0.0
        text = _format_size(done)
        if self.total:
            text += f" of {_format_size(self.total)} ({100 * done / self.total:.0f}%)"
        text += f", {_format_size(int(rate))}/s"
        if self.total and rate > 0:
            text += f", about {_format_duration(max(self.total - done, 0) / rate)} left"
        log.info("%s: %s", self.desc, text)
        self._mark_time, self._mark_bytes = now, done


def _size_of(folder: Path, pattern: str) -> int:
    return sum(path.stat().st_size for path in folder.glob(pattern) if path.is_file())


@contextlib.contextmanager
def _log_growth(folder: Path, pattern: str, meter: _ProgressLog) -> Iterator[None]:
    """While the body runs, report the size of the files ``folder/pattern`` to ``meter`` (a
    download another library writes, gdown's ``.part`` file) from a background thread."""
    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(min(meter.interval, 5.0)):
            meter.report(_size_of(folder, pattern))

    thread = threading.Thread(target=watch, name=f"progress-{meter.desc}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


# --------------------------------------------------------------------------- HTTP


class _Transient(Exception):
    """A failure worth retrying on the same mirror (timeout, lost connection, 5xx)."""


class _RangeNotSatisfiable(_Transient):
    """HTTP 416 to a resume request: the partial file must go."""


class _MirrorFailed(Exception):
    """This mirror cannot deliver the file (4xx, wrong size or checksum, retries used up)."""


def _part_size(part: Path) -> int:
    return part.stat().st_size if part.exists() else 0


def _open(url: str, offset: int, timeout: float) -> http.client.HTTPResponse:
    headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        return urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as error:
        error.close()
        if error.code >= 500 or error.code in (408, 429):
            raise _Transient(f"HTTP {error.code} {error.reason}") from None
        if error.code == 416 and offset:
            raise _RangeNotSatisfiable("HTTP 416: the server refused the resume range") from None
        raise _MirrorFailed(f"{url}: HTTP {error.code} {error.reason}") from None
    except urllib.error.URLError as error:
        raise _Transient(f"cannot connect ({error.reason})") from None
    except (OSError, http.client.HTTPException) as error:  # timeouts, resets, bad status lines
        raise _Transient(f"connection failed ({error!r})") from None


def _attempt(
    url: str, part: Path, expected_size: int | None, timeout: float, progress: bool, desc: str
) -> bool:
    """One request: append to (or restart) ``part``. Returns True if it resumed a partial file.

    Raises _Transient when the transfer should be retried, _MirrorFailed when not.
    """
    offset = _part_size(part)
    if expected_size is not None and offset > expected_size:
        part.unlink()  # longer than the real file: cannot be a prefix of it
        offset = 0
    if expected_size is not None and offset == expected_size:
        return True  # a previous attempt finished the transfer; verification decides
    try:
        response = _open(url, offset, timeout)
    except _RangeNotSatisfiable as error:
        part.unlink(missing_ok=True)
        raise _Transient(f"{error}; restarting from zero") from None
    with response:
        resumed = False
        if response.status == 206 and offset:
            match = _CONTENT_RANGE_RE.match(response.headers.get("Content-Range", ""))
            if not match or int(match.group(1)) != offset:
                part.unlink()
                raise _Transient(
                    f"asked for bytes from {offset}, server answered Content-Range "
                    f"{response.headers.get('Content-Range')!r}; restarting from zero"
                )
            total = None if match.group(3) == "*" else int(match.group(3))
            resumed = True
        elif response.status == 200:
            if offset:
                log.info("%s: %s ignored the Range request; restarting from zero", desc, url)
                offset = 0
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
        else:
            raise _MirrorFailed(
                f"{url}: unexpected HTTP status {response.status} (asked for bytes from {offset})"
            )

        # A login or error page served with status 200 would otherwise be recorded in the lock file.
        content_type = response.headers.get("Content-Type", "")
        if content_type.startswith("text/html") and not part.name.endswith((".html.part", ".htm.part")):
            raise _MirrorFailed(f"{url}: the server sent an HTML page, not the file (a login or error page?)")
        if expected_size is not None and total is not None and total != expected_size:
            raise _MirrorFailed(f"{url}: the server's file has {total} bytes, {expected_size} are expected")

        received = offset
        lines = None if progress else _ProgressLog(desc, total, offset)  # no bar: a line every 30 s
        with (
            open(part, "ab" if offset else "wb") as out,
            tqdm(
                total=total,
                initial=offset,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=desc,
                disable=not progress,
                mininterval=1.0,
            ) as bar,
        ):
            while True:
                try:
                    chunk = response.read1(CHUNK_SIZE)  # whatever has arrived, up to a chunk
                except (OSError, http.client.HTTPException) as error:
                    raise _Transient(f"connection lost after {received} bytes ({error!r})") from None
                if not chunk:
                    break
                try:
                    out.write(chunk)
                except OSError as error:  # disk full, permissions: not worth retrying
                    raise DownloadError(f"cannot write {part}: {error}") from None
                received += len(chunk)
                bar.update(len(chunk))
                if lines is not None:
                    lines.update(len(chunk))
        if total is not None and received < total:
            raise _Transient(f"connection closed after {received} of {total} bytes")
    return resumed


def _fetch_part(
    url: str,
    part: Path,
    expected_size: int | None,
    *,
    retries: int,
    timeout: float,
    backoff: float,
    progress: bool,
    desc: str,
) -> bool:
    """Bring ``part`` to completion from one mirror, retrying transient failures.

    Returns True if any request resumed a partial file. An attempt that made the
    file longer than ever before does not use up a retry, so a large archive on a
    flaky link keeps going as long as each attempt adds bytes (this stays bounded:
    the high-water mark can only grow up to the file's size).
    """
    failures = 0
    high_water = _part_size(part)
    resumed = False
    while True:
        try:
            resumed |= _attempt(url, part, expected_size, timeout, progress, desc)
            return resumed
        except _Transient as error:
            size = _part_size(part)
            if size > high_water:
                high_water, failures = size, 0
            else:
                failures += 1
            if failures > retries:
                raise _MirrorFailed(f"{url}: giving up after {retries} retries: {error}") from None
            delay = min(backoff * 2 ** max(failures - 1, 0), MAX_BACKOFF_S)
            log.warning("%s: %s: %s; retrying in %.3g s", desc, url, error, delay)
            time.sleep(delay)


def _fetch(
    artifact: Artifact,
    dest: Path,
    expected: _Expected,
    *,
    retries: int,
    timeout: float,
    backoff: float,
    progress: bool,
) -> tuple[int, str, str]:
    """Download, verify and rename into place. Returns (size, sha256, url)."""
    target = dest / artifact.filename
    part = target.with_name(target.name + ".part")
    target.parent.mkdir(parents=True, exist_ok=True)
    errors = []
    for url in artifact.urls:
        log.info("%s: downloading %s", artifact.name, url)
        try:
            # A partial file assembled from several responses can hold stale bytes (the
            # upstream file changed, or a mirror differs): if it fails the check, fetch
            # it once more from zero before giving up on this mirror.
            for from_zero in (False, True):
                resumed = _fetch_part(
                    url,
                    part,
                    expected.size,
                    retries=retries,
                    timeout=timeout,
                    backoff=backoff,
                    progress=progress,
                    desc=artifact.name,
                )
                try:
                    size, sha256 = _verify_file(part, artifact, expected)
                except DownloadError as error:
                    part.unlink()  # never keep bytes that failed verification
                    if resumed and not from_zero:
                        log.warning("%s; fetching again from zero", error)
                        continue
                    raise _MirrorFailed(f"{url}: {error} The partial file was deleted.") from None
                os.replace(part, target)
                log.info("%s: verified %s (%d bytes, sha256 %s)", artifact.name, target, size, sha256)
                return size, sha256, url
        except _MirrorFailed as error:
            log.error("%s: %s", artifact.name, error)
            errors.append(str(error))
    tried = "\n  ".join(errors)
    raise DownloadError(
        f"{artifact.name}: could not download from any of its {len(artifact.urls)} URL(s):\n  {tried}"
    )


# --------------------------------------------------------------------------- Google Drive and local files


def _looks_like_html(path: Path) -> bool:
    with open(path, "rb") as handle:
        start = handle.read(512).lstrip().lower()
    return start.startswith((b"<!doctype html", b"<html"))


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


def google_drive_instructions(artifact: Artifact, dest: str | os.PathLike, reason: str) -> str:
    """What to do by hand when gdown cannot fetch a Google Drive file."""
    source = artifact.google_drive
    assert source is not None
    dest = Path(dest)
    return (
        f"{artifact.name}: could not fetch {source.file!r} from Google Drive: {reason}\n"
        f"Download it by hand: open the folder {source.folder} in a browser, download the file "
        f"{source.file!r}, put it at {dest / artifact.filename} and run the command again. The file is "
        f"then verified (its sha256 is recorded in {dest / LOCK_FILENAME} the first time and checked "
        "on every later run) and the workflow continues."
    )


def _fetch_google_drive(
    artifact: Artifact, dest: Path, expected: _Expected, *, progress: bool
) -> tuple[int, str, str]:
    """List the folder with gdown, download the file by its id (resuming), verify, rename into place.

    Any failure of gdown (no network, quota exceeded, file removed, a changed page) becomes
    :class:`ManualDownloadRequired` with the folder link, the file name and where to put it.
    """
    import gdown  # only Google Drive artifacts need it (and its requests/bs4 imports)

    source = artifact.google_drive
    assert source is not None
    target = dest / artifact.filename
    target.parent.mkdir(parents=True, exist_ok=True)
    # gdown writes <staging><random>.part beside it and, with resume=True, continues that file.
    staging = target.with_name(f".{target.name}.gdrive")

    def manual(reason: str) -> ManualDownloadRequired:
        return ManualDownloadRequired(google_drive_instructions(artifact, dest, reason))

    log.info("%s: listing the Google Drive folder %s", artifact.name, source.folder)
    try:
        listing = gdown.download_folder(url=source.folder, skip_download=True, quiet=True, remaining_ok=True)
    except Exception as error:  # gdown raises requests', bs4's and its own errors
        raise manual(f"listing the folder failed ({type(error).__name__}: {error})") from None
    if not listing:
        raise manual("gdown could not list the folder (is it still shared with 'Anyone with the link'?)")
    ids = {posixpath.normpath(entry.path.replace(os.sep, "/")): entry.id for entry in listing}
    file_id = ids.get(source.file)
    if file_id is None:
        raise manual(f"the folder does not list {source.file!r} (it lists {', '.join(sorted(ids))})")

    url = f"https://drive.google.com/uc?id={file_id}"
    log.info("%s: downloading %s (%s)", artifact.name, source.file, url)
    # gdown draws its bar unless quiet; quiet (--no-progress), its .part file is watched instead
    part_files = f"{staging.name}*.part"
    lines = (
        None if progress else _ProgressLog(artifact.name, expected.size, _size_of(staging.parent, part_files))
    )
    try:
        with _log_growth(staging.parent, part_files, lines) if lines else contextlib.nullcontext():
            written = gdown.download(id=file_id, output=str(staging), quiet=not progress, resume=True)
    except Exception as error:
        raise manual(f"the download failed ({type(error).__name__}: {error})") from None
    if written is None or not staging.is_file():
        raise manual("gdown did not deliver the file (several partial files to resume from?)")
    if _looks_like_html(staging) and not target.name.endswith((".html", ".htm")):
        staging.unlink()
        raise manual("Google Drive sent an HTML page instead of the file (download quota exceeded?)")
    try:
        size, sha256 = _verify_into_place(staging, target, artifact, expected)
    except DownloadError as error:
        raise DownloadError(f"{error} (from {url}; the downloaded file was deleted)") from None
    return size, sha256, url


def _fetch_local(artifact: Artifact, dest: Path, expected: _Expected) -> tuple[int, str, str]:
    """Copy a file on this machine into place (through ``.part``), verified like a download."""
    source = Path(str(artifact.local))
    if not source.is_file():
        raise DownloadError(f"{artifact.name}: the local source {source} does not exist (manifest 'local')")
    target = dest / artifact.filename
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + ".part")
    log.info("%s: copying %s", artifact.name, source)
    try:
        shutil.copyfile(source, part)
    except OSError as error:
        part.unlink(missing_ok=True)
        raise DownloadError(f"{artifact.name}: cannot copy {source} to {part}: {error}") from None
    size, sha256 = _verify_into_place(part, target, artifact, expected)
    return size, sha256, source.resolve().as_uri()


# --------------------------------------------------------------------------- unpacking


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
    if _marker_matches(artifact, dest, sha256) and _missing(artifact, dest) == []:
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


# --------------------------------------------------------------------------- download


def _missing(artifact: Artifact, dest: Path) -> list[str]:
    return [p for p in artifact.produces if not (dest / p).exists()]


def _check_produces(artifact: Artifact, dest: Path) -> None:
    missing = _missing(artifact, dest)
    if missing:
        raise DownloadError(
            f"{artifact.name}: the manifest says it produces {', '.join(missing)} under {dest}, "
            "but after downloading and unpacking these are missing (has the archive's layout changed?)"
        )


def _present_without_file(artifact: Artifact, dest: Path) -> bool:
    """The outputs exist although the file does not: a manual artifact supplied unpacked,
    or an archive deleted after a successful unpack (its marker stands for it)."""
    if artifact.unpack == "none" or _missing(artifact, dest):
        return False
    return artifact.is_manual or _marker_matches(artifact, dest, None)


def manual_instructions(artifact: Artifact, dest: str | os.PathLike) -> str:
    """Where to get a manual artifact and where to put it."""
    dest = Path(dest)
    unpacked = " or ".join(str(dest / p) for p in artifact.produces)
    return (
        f"{artifact.name}: {artifact.manual}\n"
        f"Put the archive at {dest / artifact.filename} (or the unpacked folder at {unpacked}) "
        "and run the command again; it then verifies and unpacks it and the workflow continues."
    )


def download(
    artifact: Artifact,
    dest: str | os.PathLike,
    *,
    retries: int = 5,
    timeout: float = 60.0,
    progress: bool = True,
    unpack: bool = True,
    backoff: float = 1.0,
    update_lock: bool = False,
    others: Iterable[Artifact] = (),
) -> DownloadResult:
    """Make ``artifact`` present and verified under ``dest``, downloading only what is missing.

    ``retries`` counts retries per mirror; ``backoff`` is the first retry's delay in
    seconds (it doubles each time, up to a minute). ``update_lock`` ignores the lock
    file's record and replaces it with what is fetched now (for a source that changed on
    purpose, e.g. a checkpoint the workflow itself re-exported). ``others``: the manifest's other
    artifacts, whose files unpacking never replaces. Raises
    :class:`DownloadError`, :class:`UnsafeArchiveError` or, for a missing manual artifact
    or a Google Drive file gdown cannot fetch, :class:`ManualDownloadRequired`.
    """
    dest = Path(dest)
    target = dest / artifact.filename
    result = DownloadResult(artifact.name, target, None, None, produces=[dest / p for p in artifact.produces])
    expected = _expected(artifact, dest, use_lock=not update_lock)

    if target.exists():
        result.size, result.sha256 = _verify_file(target, artifact, expected)
        log.info("%s: %s is present and verifies", artifact.name, target)
    elif _present_without_file(artifact, dest):
        log.info("%s: already present under %s", artifact.name, dest)
        result.path = None
        return result
    elif artifact.is_manual:
        raise ManualDownloadRequired(manual_instructions(artifact, dest))
    else:
        if artifact.google_drive is not None:
            fetched = _fetch_google_drive(artifact, dest, expected, progress=progress)
        elif artifact.local is not None:
            fetched = _fetch_local(artifact, dest, expected)
        else:
            fetched = _fetch(
                artifact, dest, expected, retries=retries, timeout=timeout, backoff=backoff, progress=progress
            )
        result.size, result.sha256, result.url = fetched
        result.downloaded = True

    if artifact.unpack != "none" and unpack:
        # Unpacked before its checksum is recorded: an archive that is refused is never trusted.
        try:
            result.unpacked = _unpack(artifact, dest, target, str(result.sha256), others)
        except ArchiveError as error:
            raise _refuse(artifact, dest, target, str(result.sha256), error) from None
    if expected.sha256 is None:
        _record_lock(dest, artifact, result.size, result.sha256, result.url)
    if artifact.unpack != "none" and not unpack:
        return result
    _check_produces(artifact, dest)
    return result


# --------------------------------------------------------------------------- CLI


def configure_parser(parser) -> None:
    parser.add_argument("names", nargs="*", metavar="NAME", help="artifacts to download (see --list)")
    parser.add_argument("--dest", type=Path, help="folder the artifacts go to (and the lock file)")
    parser.add_argument(
        "--manifest", type=Path, default=DEFAULT_MANIFEST, help="manifest to read (default: the shipped one)"
    )
    parser.add_argument("--retries", type=nonnegative_int, default=5, help="retries per mirror (default 5)")
    parser.add_argument(
        "--timeout", type=positive_float, default=60.0, help="seconds without data before retrying"
    )
    parser.add_argument("--no-unpack", action="store_true", help="download and verify only")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (for log files)")
    parser.add_argument("--list", action="store_true", help="list the manifest's artifacts and exit")
    parser.add_argument(
        "--update-lock",
        action="store_true",
        help="replace the lock file's checksum with that of the file fetched now (a source that changed on purpose)",
    )


def _format_size(size: int | None) -> str:
    if size is None:
        return "?"
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return str(size)


def run(args) -> int:
    manifest = load_manifest(args.manifest)
    if args.list:
        for artifact in manifest.values():
            how = {"manual": "MANUAL", "google_drive": "GDRIVE", "local": "LOCAL"}.get(
                artifact.source, _format_size(artifact.size)
            )
            print(f"{artifact.name:32} {how:>10}  {artifact.description}")
            print(f"{'':32} {'':>10}  -> {', '.join(artifact.produces)}")
        return 0
    if not args.names:
        raise AmcError("name at least one artifact to download (amc download --list shows them)")
    if args.dest is None:
        raise AmcError("--dest DIR is required")
    check_outputs({}, folders={"--dest": args.dest})
    unknown = [n for n in args.names if n not in manifest]
    if unknown:
        raise AmcError(
            f"{args.manifest}: no artifact named {', '.join(unknown)}; known: {', '.join(manifest)}"
        )

    failed = manual_missing = False
    for name in dict.fromkeys(args.names):  # each once, in the order given
        try:
            download(
                manifest[name],
                args.dest,
                retries=args.retries,
                timeout=args.timeout,
                progress=not args.no_progress,
                unpack=not args.no_unpack,
                update_lock=args.update_lock,
                others=manifest.values(),
            )
        except ManualDownloadRequired as error:
            log.error("%s", error)
            manual_missing = True
        except AmcError as error:
            log.error("%s", error)
            failed = True
    if failed:
        return 2
    return EXIT_MANUAL if manual_missing else 0
