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

:func:`record_from_dict` is the one validator: strings are non-empty strings, sizes whole numbers
>= 1. Boxes are checked for four finite numbers with x2 > x1 and y2 > y1, nothing more: a box reaching
outside the image stays as annotated, since the released evaluation tests points against the
boxes as they are (training masks are clipped to the image when drawn).

Beside a records file, ``amc prepare`` writes ``<name>.prepare.json``
(:func:`prepare_report_path`): what it skipped, by reason, which ``amc evaluate`` copies into
its result.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from amc.io import (
    DataError,
    atomic_write_json,
    is_finite_number,
    read_json,
    read_jsonl,
    sha256_file,
    write_jsonl,
)

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
    if not all(is_finite_number(v) for v in box):
        raise DataError(f"{where}: box {box!r} holds a non-finite number")
    x1, y1, x2, y2 = (float(v) for v in box)
    if x2 <= x1 or y2 <= y1:
        raise DataError(f"{where}: box {box!r} is empty (needs x2 > x1 and y2 > y1)")
    return [x1, y1, x2, y2]


def _text(row: dict, key: str, where: str, optional: bool = False) -> str | None:
    """A field that must be a non-empty string (or absent/null when ``optional``)."""
    value = row.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"{where}: field {key!r} must be a non-empty string, got {value!r}")
    return value


def _size(row: dict, key: str, where: str) -> int:
    value = row[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise DataError(f"{where}: field {key!r} must be a whole number of pixels >= 1, got {value!r}")
    return value


def _boxes(row: dict, key: str, where: str, required: bool) -> list[Box]:
    value = row.get(key)
    if value is None and not required:
        return []
    if not isinstance(value, list) or (required and not value):
        raise DataError(f"{where}: field {key!r} must be a {'non-empty ' if required else ''}list of boxes")
    return [validate_box(box, f"{where}: {key}[{n}]") for n, box in enumerate(value)]


def record_from_dict(row: dict, where: str) -> Record:
    """The one validator of a record: every field's type, every number finite and in range.

    Whatever it accepts is a sound case (what it refuses is a DataError naming ``where`` and the
    field); fields it does not know are ignored.
    """
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}")
    missing = [key for key in REQUIRED if key not in row]
    if missing:
        raise DataError(f"{where}: missing field(s) {', '.join(missing)}")
    phrase = row["phrase"]
    if not isinstance(phrase, str) or not phrase.strip():
        raise DataError(f"{where}: field 'phrase' must be a non-empty string, got {phrase!r}")
    captions = row.get("captions") or []
    if not isinstance(captions, list) or not all(isinstance(c, str) and c.strip() for c in captions):
        raise DataError(f"{where}: captions must be a list of non-empty strings, got {captions!r}")
    if captions and captions[0] != phrase:
        raise DataError(f"{where}: phrase {phrase!r} must be the first of captions {captions!r}")
    return Record(
        id=_text(row, "id", where),
        dataset=_text(row, "dataset", where),
        split=_text(row, "split", where),
        image=_text(row, "image", where),
        width=_size(row, "width", where),
        height=_size(row, "height", where),
        phrase=phrase,
        boxes=_boxes(row, "boxes", where, required=True),
        category=_text(row, "category", where, optional=True),
        image_id=_text(row, "image_id", where, optional=True),
        other_boxes=_boxes(row, "other_boxes", where, required=False),
        captions=list(captions),
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
    """Write records, each checked by :func:`record_from_dict` first: what is written loads."""
    rows = [r.to_dict() for r in records]
    for row in rows:
        record_from_dict(row, f"{path}: record {row.get('id')!r}")
    return write_jsonl(path, rows)


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
    _check_prepare_report(report, path)
    return {k: v for k, v in report.items() if k != "records_sha256"}


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _check_prepare_report(report: dict, path: Path) -> None:
    """The fields :func:`write_prepare_report` writes, with their types; a DataError names the field."""
    if not isinstance(report.get("dataset"), str):
        raise DataError(f"{path}: field 'dataset' must be a string, got {report.get('dataset')!r}")
    if "split" not in report or not isinstance(report["split"], str | None):  # None: every split
        raise DataError(
            f"{path}: field 'split' must be a string or null, got {report.get('split', 'nothing')!r}"
        )
    if not _is_count(report.get("records")):
        raise DataError(f"{path}: field 'records' must be a whole number >= 0, got {report.get('records')!r}")
    for key in ("skipped", "left_out"):
        counts = report.get(key)
        if not isinstance(counts, dict) or not all(_is_count(n) for n in counts.values()):
            raise DataError(f"{path}: field {key!r} must map reasons to whole numbers >= 0, got {counts!r}")
