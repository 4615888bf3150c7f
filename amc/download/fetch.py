"""Fetching a file into place: HTTP(S) mirrors (resuming with Range requests, retrying with back-off),
a file in a public Google Drive folder (gdown), or a file on this machine. Each is verified
(:mod:`amc.download.verify`) before it is renamed into place; a file that fails is deleted."""

from __future__ import annotations

import contextlib
import http.client
import logging
import os
import posixpath
import re
import shutil
import time
import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

from amc.download.errors import DownloadError, ManualDownloadRequired
from amc.download.manifest import Artifact
from amc.download.progress import _log_growth, _ProgressLog, _size_of
from amc.download.verify import LOCK_FILENAME, _Expected, _verify_file, _verify_into_place

log = logging.getLogger(__name__)

USER_AGENT = "amc-bench-downloader/0.1 (Python urllib)"
CHUNK_SIZE = 1 << 20
MAX_BACKOFF_S = 60.0
_CONTENT_RANGE_RE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")


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
