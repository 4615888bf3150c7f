"""``amc prepare``: read a raw dataset into grounding records (JSON Lines).

    amc prepare {vg,flickr30k,refcoco+} --root RAW [--images DIR] [--split S] --out FILE.jsonl
                [--exclude-records A.jsonl ...] [--on-error skip|stop]
                [--format raw|released] [--kinds ...] [--files ...] [--image-data FILE]   (vg)

Structural problems (a missing or malformed file) stop the run. A bad individual annotation
(an empty phrase, an empty or non-numeric box, and, when ``--images`` is given, a missing image
file or one whose header cannot be read) is skipped and counted (``--on-error skip``, the
default) or stops the run (``--on-error stop``). The counts by reason are logged at the end and
written beside the records (``FILE.prepare.json``, :func:`amc.records.write_prepare_report`),
where ``amc evaluate`` reads them. Image paths in the output are relative to the output file's
folder.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from amc.data import ON_ERROR, Problems
from amc.io import DataError, check_outputs
from amc.records import Record, load_records, prepare_report_path, save_records, write_prepare_report

log = logging.getLogger(__name__)

DATASETS = ("vg", "flickr30k", "refcoco+")
VG_FORMATS = ("raw", "released")  # raw Visual Genome annotations | the released AMC phrase files
# Which native id of a VG image (image_data.json) matches the image_id of records of a dataset.
EXCLUDE_KEYS = {"refcoco+": "coco_id", "refcoco": "coco_id", "refcocog": "coco_id", "flickr30k": "flickr_id"}


def eval_image_ids(paths: list[str | os.PathLike]) -> dict[str, set[str]]:
    """``{"coco_id": {...}, "flickr_id": {...}}`` from evaluation records files."""
    ids: dict[str, set[str]] = {"coco_id": set(), "flickr_id": set()}
    for path in paths:
        for record in load_records(path, resolve_images=False):
            key = EXCLUDE_KEYS.get(record.dataset)
            if key is None:
                raise DataError(
                    f"{path}: record {record.id}: dataset {record.dataset!r} has no id in VG's image_data.json (known: {', '.join(EXCLUDE_KEYS)})"
                )
            if record.image_id is None:
                raise DataError(f"{path}: record {record.id}: no image_id, so its image cannot be excluded")
            ids[key].add(str(record.image_id))
    return ids


def read_dataset(
    dataset: str,
    root: str | os.PathLike,
    images: str | os.PathLike | None = None,
    split: str | None = None,
    exclude_records: list[str | os.PathLike] = (),
    problems: Problems | None = None,
    kinds: list[str] | None = None,
    vg_format: str = "raw",
    files: list[str] | None = None,
    image_data: str | os.PathLike | None = None,
) -> list[Record]:
    """The records of a raw dataset; image files are checked only when ``images`` is given."""
    problems = problems or Problems()
    check = images is not None
    if dataset != "vg" and (exclude_records or kinds or files or image_data):
        raise DataError(
            f"--exclude-records, --kinds, --files and --image-data apply to vg only, not {dataset}"
        )
    if dataset == "vg":
        if vg_format not in VG_FORMATS:
            raise DataError(f"vg: unknown format {vg_format!r} (choose from {', '.join(VG_FORMATS)})")
        if split not in (None, "train"):
            raise DataError(f"vg: has only a train split, not {split!r}")
        ids = eval_image_ids(list(exclude_records))
        if vg_format == "released":
            from amc.data.vg_released import read_vg_released

            if kinds:
                raise DataError(
                    "vg: --kinds applies to --format raw; the released files are chosen with --files"
                )
            if images is None:
                raise DataError(
                    "vg --format released needs --images (the VG image root): the boxes are clipped "
                    "to each image's size, read from the file"
                )
            return read_vg_released(
                root, images, files, ids["coco_id"], ids["flickr_id"], image_data, problems
            )
        from amc.data.vg import KINDS, read_vg

        if files or image_data:
            raise DataError("vg: --files and --image-data apply to --format released")
        return read_vg(root, images, check, kinds or KINDS, ids["coco_id"], ids["flickr_id"], problems)
    if dataset == "flickr30k":
        from amc.data.flickr30k import read_flickr30k

        return read_flickr30k(root, split, images, check, problems)
    if dataset == "refcoco+":
        from amc.data.refcoco import read_refcoco

        return read_refcoco(root, split, images, check, problems)
    raise DataError(f"unknown dataset {dataset!r} (choose from {', '.join(DATASETS)})")


def prepare(
    dataset: str,
    root: str | os.PathLike,
    out: str | os.PathLike,
    images: str | os.PathLike | None = None,
    split: str | None = None,
    exclude_records: list[str | os.PathLike] = (),
    on_error: str = "skip",
    kinds: list[str] | None = None,
    vg_format: str = "raw",
    files: list[str] | None = None,
    image_data: str | os.PathLike | None = None,
) -> tuple[list[Record], Problems]:
    """Read, make image paths relative to ``out``'s folder, write ``out`` and its prepare report."""
    root, out = Path(root), Path(out)
    if not root.is_dir():
        raise DataError(f"{root}: raw dataset folder not found")
    problems = Problems(on_error)
    records = read_dataset(
        dataset, root, images, split, exclude_records, problems, kinds, vg_format, files, image_data
    )
    if not records:
        raise DataError(
            f"{dataset} in {root} (split {split or 'all'}): no records left to write ({problems.summary()})"
        )
    out_dir = out.resolve().parent
    seen: set[str] = set()
    for record in records:
        if record.id in seen:
            raise DataError(f"{dataset} in {root}: two records share the id {record.id!r}")
        seen.add(record.id)
        record.image = os.path.relpath(Path(record.image).resolve(), out_dir)
    save_records(out, records)
    write_prepare_report(
        out, {"dataset": dataset, "split": split, "records": len(records), **problems.to_dict()}
    )
    log.info("prepare %s: wrote %d records to %s; %s", dataset, len(records), out, problems.summary())
    return records, problems


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", choices=DATASETS)
    parser.add_argument("--root", required=True, help="folder of the raw annotations")
    parser.add_argument(
        "--images",
        help="folder of the images (default: vg ROOT, flickr30k ROOT/flickr30k-images, refcoco+ ROOT/../coco/train2014); "
        "when given, records whose image file is missing or unreadable (header check) are skipped and counted; "
        "vg --format released: the VG image root (required)",
    )
    parser.add_argument(
        "--split", help="flickr30k: train|val|test, refcoco+: train|val|testA|testB (default: all)"
    )
    parser.add_argument("--out", required=True, help="records file to write (JSON Lines)")
    parser.add_argument(
        "--exclude-records",
        nargs="+",
        default=[],
        metavar="RECORDS",
        help="vg only: leave out VG images whose coco_id/flickr_id is an image of these evaluation records",
    )
    parser.add_argument(
        "--format",
        choices=VG_FORMATS,
        default="raw",
        help="vg only: raw = Visual Genome's own annotations in ROOT (image_data.json, region_descriptions.json, "
        "attributes.json, relationships.json); released = the AMC authors' phrase files in ROOT "
        "(vg_descriptions.json, vg_attributes_spatial.json, vg_attributes.json), which the paper config trains on "
        "(default: raw)",
    )
    parser.add_argument(
        "--kinds", nargs="+", help="vg --format raw: region attribute relation (default: all)"
    )
    parser.add_argument(
        "--files",
        nargs="+",
        help="vg --format released: the phrase files to read (relative to ROOT or absolute; default: the three released ones)",
    )
    parser.add_argument(
        "--image-data",
        help="vg --format released: VG's image_data.json, needed by --exclude-records (it maps VG image ids to COCO/Flickr ids)",
    )
    parser.add_argument(
        "--on-error",
        choices=ON_ERROR,
        default="skip",
        help="a bad annotation (empty phrase, bad box, missing or unreadable image): skip and count it (default) or stop",
    )


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    check_outputs(
        {"--out": out, "--out (its prepare report)": prepare_report_path(out)},
        {
            **{f"--exclude-records {p}": p for p in args.exclude_records},
            "--image-data": args.image_data,
            **{f"--files {f}": Path(args.root) / f for f in args.files or []},
        },
    )
    prepare(
        args.dataset,
        args.root,
        args.out,
        args.images,
        args.split,
        args.exclude_records,
        args.on_error,
        args.kinds,
        args.format,
        args.files,
        args.image_data,
    )
    return 0
