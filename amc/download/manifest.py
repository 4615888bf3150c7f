"""The download manifest: its entries (:class:`Artifact`), reading and validating them.

Every field is checked where the file is read (:func:`load_manifest`), so a malformed entry stops
the command or the workflow at start-up with the file, the entry and the field named.
"""

from __future__ import annotations

import os
import posixpath
import re
from dataclasses import dataclass
from importlib.resources.abc import Traversable
from pathlib import Path

from amc.download.errors import ManifestError
from amc.io import NAME_RULE, AmcError, DataError, confined, is_name, read_yaml
from amc.resources import MANIFEST, resource

DEFAULT_MANIFEST = resource(MANIFEST)  # amc/resources/manifest.yaml, package data
UNPACK_KINDS = ("none", "zip", "tar", "tar.gz", "auto")
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


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
        if not isinstance(sha256, str) or not SHA256_RE.match(sha256.lower()):
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


def missing_outputs(artifact: Artifact, dest: Path) -> list[str]:
    """What the artifact produces that is not under ``dest``."""
    return [p for p in artifact.produces if not (dest / p).exists()]
