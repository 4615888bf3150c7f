"""The errors of ``amc download``; every one is an :class:`~amc.io.AmcError` with a message a person can act on."""

from __future__ import annotations

from amc.io import AmcError, DataError


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
