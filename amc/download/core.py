"""One artifact from its manifest entry to verified, unpacked files under the destination
(:func:`download`, the steps listed in :mod:`amc.download`)."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from amc.download.errors import ArchiveError, DownloadError, ManualDownloadRequired
from amc.download.fetch import _fetch, _fetch_google_drive, _fetch_local
from amc.download.manifest import Artifact, missing_outputs
from amc.download.unpack import _marker_matches, _refuse, _unpack
from amc.download.verify import _expected, _record_lock, _verify_file

log = logging.getLogger(__name__)


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


def _check_produces(artifact: Artifact, dest: Path) -> None:
    missing = missing_outputs(artifact, dest)
    if missing:
        raise DownloadError(
            f"{artifact.name}: the manifest says it produces {', '.join(missing)} under {dest}, "
            "but after downloading and unpacking these are missing (has the archive's layout changed?)"
        )


def _present_without_file(artifact: Artifact, dest: Path) -> bool:
    """The outputs exist although the file does not: a manual artifact supplied unpacked,
    or an archive deleted after a successful unpack (its marker stands for it)."""
    if artifact.unpack == "none" or missing_outputs(artifact, dest):
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
