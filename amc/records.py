"""The one record format every dataset becomes after ``amc prepare``.

One JSON object per line (JSON Lines), one grounding case per record:

``id``       stable, unique string (e.g. ``flickr30k/test/1000092795/0/3``)
``dataset``  ``vg``, ``flickr30k``, ``refcoco+`` (synthetic data uses the same names)
``split``    ``train``, ``val``, ``test``, ``testA``, ``testB``
``image``    path to the image file (absolute, or relative to the records file's folder)
``width``, ``height``   original image size in pixels
``phrase``   the text to ground (non-empty)
``boxes``    list of ``[x1, y1, x2, y2]`` in pixels of the original image (x2 > x1, y2 > y1)

Optional fields: ``category`` (Flickr30k entity type, COCO category, synthetic shape; used by
reports), ``image_id``, ``other_boxes`` (every other annotated box of the same image, for the
wrong-object vs background decomposition of misses), ``captions`` (training records of the
released VG phrase files: every caption of an entry that has several, ``phrase`` being the
first; empty otherwise; :class:`~amc.data.datasets.PhraseBoxDataset` draws one per sample).

Boxes are checked for four finite numbers with x2 > x1 and y2 > y1, nothing more: a box reaching
outside the image stays as annotated, since the released evaluation tests points against the
boxes as they are (training masks are clipped to the image when drawn).

Beside a records file, ``amc prepare`` writes ``<name>.prepare.json``
(:func:`prepare_report_path`): what it skipped, by reason, which ``amc evaluate`` copies into
its result.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from amc.io import DataError, atomic_write_json, read_json, read_jsonl, sha256_file, write_jsonl

log = logging.getLogger(__name__)

Box = list[float]


@dataclass
class Record:
    id: str
    dataset: str
    split: str
    image: str
    width: int
    height: int
    phrase: str
    boxes: list[Box]
    category: str | None = None
    image_id: str | None = None
    other_boxes: list[Box] = field(default_factory=list)
    captions: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


REQUIRED = ("id", "dataset", "split", "image", "width", "height", "phrase", "boxes")


def validate_box(box, where: str) -> Box:
    """Return the box as floats, or raise DataError naming ``where`` and the problem.

    Four finite numbers with x2 > x1 and y2 > y1; a box outside the image is kept (module docstring).
    """
    if not isinstance(box, list | tuple) or len(box) != 4:
        raise DataError(f"{where}: box {box!r} is not [x1, y1, x2, y2]")
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in box):
        raise DataError(f"{where}: box {box!r} holds something other than numbers")
    x1, y1, x2, y2 = (float(v) for v in box)
    if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
        raise DataError(f"{where}: box {box!r} holds a non-finite number")
    if x2 <= x1 or y2 <= y1:
        raise DataError(f"{where}: box {box!r} is empty (needs x2 > x1 and y2 > y1)")
    return [x1, y1, x2, y2]


def record_from_dict(row: dict, where: str) -> Record:
    missing = [key for key in REQUIRED if key not in row]
    if missing:
        raise DataError(f"{where}: missing field(s) {', '.join(missing)}")
    if not str(row["phrase"]).strip():
        raise DataError(f"{where}: empty phrase")
    width, height = int(row["width"]), int(row["height"])
    if not row["boxes"]:
        raise DataError(f"{where}: no boxes")
    boxes = [validate_box(b, where) for b in row["boxes"]]
    captions = row.get("captions") or []
    if not isinstance(captions, list) or not all(isinstance(c, str) and c.strip() for c in captions):
        raise DataError(f"{where}: captions must be a list of non-empty strings, got {captions!r}")
    if captions and captions[0] != row["phrase"]:
        raise DataError(f"{where}: phrase {row['phrase']!r} must be the first of captions {captions!r}")
    known = {f for f in Record.__dataclass_fields__}
    extra = {k: v for k, v in row.items() if k in known and k not in REQUIRED}
    extra["captions"] = captions
    return Record(
        id=str(row["id"]),
        dataset=str(row["dataset"]),
        split=str(row["split"]),
        image=str(row["image"]),
        width=width,
        height=height,
        phrase=str(row["phrase"]),
        boxes=boxes,
        **extra,
    )


def load_records(path: str | os.PathLike, resolve_images: bool = True) -> list[Record]:
    """Load and validate a records file; image paths are resolved against its folder."""
    path = Path(path)
    rows = read_jsonl(path)
    if not rows:
        raise DataError(f"{path}: no records (empty file)")
    records, seen = [], set()
    resolved: dict[str, str] = {}  # many phrases share an image: resolve (a stat per folder level) once
    for number, row in enumerate(rows, start=1):
        record = record_from_dict(row, f"{path}: record {number}")
        if record.id in seen:
            raise DataError(f"{path}: record {number}: duplicate id {record.id!r}")
        seen.add(record.id)
        if resolve_images and not os.path.isabs(record.image):
            if record.image not in resolved:
                resolved[record.image] = str((path.parent / record.image).resolve())
            record.image = resolved[record.image]
        records.append(record)
    return records


def save_records(path: str | os.PathLike, records: list[Record]) -> int:
    return write_jsonl(path, (r.to_dict() for r in records))


def prepare_report_path(records_path: str | os.PathLike) -> Path:
    """Where ``amc prepare`` writes what it skipped for ``records_path`` (``X.jsonl`` -> ``X.prepare.json``)."""
    return Path(records_path).with_suffix(".prepare.json")


def write_prepare_report(records_path: str | os.PathLike, report: dict) -> Path:
    """Write the prepare report of a records file just written, tied to it by its sha256."""
    path = prepare_report_path(records_path)
    atomic_write_json(path, {**report, "records_sha256": sha256_file(records_path)})
    return path


def read_prepare_report(records_path: str | os.PathLike) -> dict | None:
    """The prepare report of ``records_path``; ``None`` (with a warning) when absent or stale."""
    path = prepare_report_path(records_path)
    if not path.is_file():
        log.warning("%s: no prepare report, so the cases skipped by amc prepare are unknown", path)
        return None
    report = read_json(path)
    if not isinstance(report, dict) or report.get("records_sha256") != sha256_file(records_path):
        log.warning("%s: does not belong to the current %s (rerun amc prepare); ignored", path, records_path)
        return None
    return {k: v for k, v in report.items() if k != "records_sha256"}
