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

The package, by what each part does:

* :mod:`~amc.download.manifest`: the manifest's entries (:class:`Artifact`), read and validated;
* :mod:`~amc.download.fetch`: HTTP with resume and retries, Google Drive (gdown), local files;
* :mod:`~amc.download.verify`: sizes and checksums, the lock file;
* :mod:`~amc.download.unpack`: safe archive extraction, refused archives;
* :mod:`~amc.download.progress`: progress lines for log files;
* :mod:`~amc.download.core`: :func:`download`, the steps above for one artifact;
* :mod:`~amc.download.cli`: the ``amc download`` command line;
* :mod:`~amc.download.errors`: the errors, each an :class:`~amc.io.AmcError`.
"""

from amc.download.cli import EXIT_MANUAL, configure_parser, run
from amc.download.core import DownloadResult, download, manual_instructions
from amc.download.errors import (
    ArchiveError,
    DownloadError,
    ManifestError,
    ManualDownloadRequired,
    UnsafeArchiveError,
)
from amc.download.fetch import google_drive_instructions
from amc.download.manifest import DEFAULT_MANIFEST, UNPACK_KINDS, Artifact, GoogleDriveFile, load_manifest
from amc.download.unpack import is_downloader_file, unpack_archive
from amc.download.verify import LOCK_FILENAME, read_lock

__all__ = [
    "DEFAULT_MANIFEST",
    "EXIT_MANUAL",
    "LOCK_FILENAME",
    "UNPACK_KINDS",
    "ArchiveError",
    "Artifact",
    "DownloadError",
    "DownloadResult",
    "GoogleDriveFile",
    "ManifestError",
    "ManualDownloadRequired",
    "UnsafeArchiveError",
    "configure_parser",
    "download",
    "google_drive_instructions",
    "is_downloader_file",
    "load_manifest",
    "manual_instructions",
    "read_lock",
    "run",
    "unpack_archive",
]
