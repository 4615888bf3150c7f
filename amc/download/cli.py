"""The command line of ``amc download``."""

from __future__ import annotations

import logging
from pathlib import Path

from amc.cli import nonnegative_int, positive_float
from amc.download.core import download
from amc.download.errors import ManualDownloadRequired
from amc.download.manifest import DEFAULT_MANIFEST, load_manifest
from amc.download.progress import _format_size
from amc.io import AmcError, check_outputs

log = logging.getLogger(__name__)

EXIT_MANUAL = 3  # exit status of `amc download` when a manual artifact is missing


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
