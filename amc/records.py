"""The one record format every dataset becomes after ``amc prepare``.

One JSON object per line (JSON Lines), one grounding case per record:

``id``       stable, unique string (e.g. ``flickr30k/test/1000092795/0/3``)
``dataset``  ``vg``, ``flickr30k``, ``refcoco+`` (synthetic data uses the same names)
``split``    ``train``, ``val``, ``test``, ``testA``, ``testB``
``image``    path to the image file (absolute, or relative to the records file's folder)
``width``, ``height``   original image size in pixels
``phrase``   the text to ground (non-empty)
``boxes``    list of ``[x1, y1, x2, y2]`` in pixels of the original image (x2 > x1, y2 > y1)

Optional fields, used by reports: ``category`` (Flickr30k entity type, COCO category,
synthetic shape), ``image_id``, ``other_boxes`` (every other annotated box of the same
image, for the wrong-object vs background decomposition of misses).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from amc.io import DataError, read_jsonl, write_jsonl

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

    def to_dict(self) -> dict:
        return asdict(self)


REQUIRED = ("id", "dataset", "split", "image", "width", "height", "phrase", "boxes")


def validate_box(box, width: int, height: int, where: str) -> Box:
    """Return the box as floats, or raise DataError naming ``where`` and the problem."""
    if not isinstance(box, list | tuple) or len(box) != 4:
        raise DataError(f"{where}: box {box!r} is not [x1, y1, x2, y2]")
    x1, y1, x2, y2 = (float(v) for v in box)
    if x2 <= x1 or y2 <= y1:
        raise DataError(f"{where}: box {box!r} is empty (needs x2 > x1 and y2 > y1)")
    # A tolerance of one pixel: COCO boxes are float and often touch the border.
    if x1 < -1 or y1 < -1 or x2 > width + 1 or y2 > height + 1:
        raise DataError(f"{where}: box {box!r} lies outside the {width}x{height} image")
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
    boxes = [validate_box(b, width, height, where) for b in row["boxes"]]
    known = {f for f in Record.__dataclass_fields__}
    extra = {k: v for k, v in row.items() if k in known and k not in REQUIRED}
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
    for number, row in enumerate(rows, start=1):
        record = record_from_dict(row, f"{path}: record {number}")
        if record.id in seen:
            raise DataError(f"{path}: record {number}: duplicate id {record.id!r}")
        seen.add(record.id)
        if resolve_images and not os.path.isabs(record.image):
            record.image = str((path.parent / record.image).resolve())
        records.append(record)
    return records


def save_records(path: str | os.PathLike, records: list[Record]) -> int:
    return write_jsonl(path, (r.to_dict() for r in records))
