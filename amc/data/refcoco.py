"""Reader of RefCOCO+ (UNC splits): ``refs(unc).p`` and ``instances.json``.

Layout under ``root``: ``refs(unc).p`` (a pickled list of refs: ``ref_id``, ``ann_id``,
``image_id``, ``split``, ``category_id``, ``sentences`` [{``sent``, ``tokens``, ``raw``,
``sent_id``}]) and ``instances.json`` (COCO format, ``bbox`` in xywh). Images default to
``root/../coco/train2014/<file_name>``.

One record per sentence; its box is the referred annotation's COCO box converted to xyxy, kept
as annotated even where it reaches outside the image (the released evaluation tests points
against it as is; only a box with a non-number or no area is dropped, and counted);
``other_boxes`` are the image's other instance boxes. ``instances.json`` is indexed by
pycocotools' ``COCO`` API, the field's reader of the format. The phrase is the sentence's ``sent``
as stored (ALBEF's ``pre_caption`` cleans it when tokenising).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import pickle
from pathlib import Path
from typing import TYPE_CHECKING

from tqdm import tqdm

from amc.data import Problems, box_problem, is_id, is_size
from amc.data.images import ImageChecker
from amc.io import DataError, read_json
from amc.records import Record

if TYPE_CHECKING:
    from pycocotools.coco import COCO

log = logging.getLogger(__name__)

DATASET = "refcoco+"
SPLITS = ("train", "val", "testA", "testB")
REFS_FILE = "refs(unc).p"


class _PlainUnpickler(pickle.Unpickler):
    """Unpickles plain lists, dicts, strings and numbers only: a refs file needs nothing else,
    and refusing classes means a hostile file cannot run code."""

    def find_class(self, module: str, name: str):
        raise pickle.UnpicklingError(f"refuses to load {module}.{name} (a refs file holds only plain data)")


def load_refs(path: str | os.PathLike) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        with path.open("rb") as handle:
            # encoding: the original file was written by Python 2; its byte strings are UTF-8.
            refs = _PlainUnpickler(handle, encoding="utf-8").load()
    except EOFError:
        raise DataError(f"{path}: truncated pickle (ended early)") from None
    except (
        pickle.UnpicklingError,
        ValueError,
        TypeError,
        KeyError,
        IndexError,
        AttributeError,
        UnicodeDecodeError,
    ) as error:
        raise DataError(f"{path}: not a readable pickle of refs ({error})") from None
    if not isinstance(refs, list):
        raise DataError(f"{path}: expected a pickled list of refs, got {type(refs).__name__}")
    for number, ref in enumerate(refs):
        missing = [
            k
            for k in ("ref_id", "ann_id", "image_id", "split", "sentences")
            if not isinstance(ref, dict) or k not in ref
        ]
        if missing:
            raise DataError(f"{path}: ref {number}: missing {', '.join(missing)}")
        bad = [k for k in ("ref_id", "ann_id", "image_id") if not is_id(ref[k])]
        if "category_id" in ref and not is_id(ref["category_id"]):
            bad.append("category_id")
        if bad:
            raise DataError(f"{path}: ref {number}: {', '.join(bad)} must be whole numbers or strings")
        if not isinstance(ref["split"], str) or not ref["split"]:
            raise DataError(f"{path}: ref {ref['ref_id']}: split must be a name, got {ref['split']!r}")
        if not isinstance(ref["sentences"], list):
            raise DataError(f"{path}: ref {ref['ref_id']}: sentences must be a list")
        for sentence in ref["sentences"]:
            if not isinstance(sentence, dict) or "sent" not in sentence or not is_id(sentence.get("sent_id")):
                raise DataError(f"{path}: ref {ref['ref_id']}: a sentence lacks 'sent' or 'sent_id'")
    return refs


# What a COCO instances file must hold for the reader, and the fields of each entry.
SECTIONS = {
    "images": ("id", "file_name", "width", "height"),
    "annotations": ("id", "image_id", "bbox", "category_id"),
    "categories": ("id", "name"),
}


def load_instances(path: str | os.PathLike) -> COCO:
    """A COCO instances file, indexed by pycocotools' ``COCO`` API (``imgs``, ``anns``, ``cats``,
    ``imgToAnns``); read and type-checked by us first, so that a bad file is an error naming it."""
    from pycocotools.coco import COCO

    path = Path(path)
    data = read_json(path)
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in SECTIONS):
        raise DataError(f"{path}: not a COCO instances file (needs lists {', '.join(SECTIONS)})")
    for section, fields in SECTIONS.items():
        for number, entry in enumerate(data[section]):
            if not isinstance(entry, dict) or not all(k in entry for k in fields):
                raise DataError(f"{path}: {section}[{number}]: needs {', '.join(fields)}")
            if not all(is_id(entry[k]) for k in fields if k.endswith("id")):
                raise DataError(f"{path}: {section}[{number}]: ids must be whole numbers or strings")
    for number, image in enumerate(data["images"]):
        if not isinstance(image["file_name"], str) or not image["file_name"]:
            raise DataError(f"{path}: images[{number}]: file_name must be a file name")
        if not (is_size(image["width"]) and is_size(image["height"])):
            raise DataError(f"{path}: images[{number}]: width and height must be whole numbers >= 1")
    for number, category in enumerate(data["categories"]):
        if not isinstance(category["name"], str):
            raise DataError(f"{path}: categories[{number}]: name must be text")
    coco = COCO()  # without a file name: it reads nothing itself
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):  # createIndex prints "creating index..."
        coco.createIndex()
    return coco


def xywh_to_xyxy(bbox) -> list:
    """COCO's [x, y, w, h] as [x1, y1, x2, y2]; something else comes back as is, for box_problem to name."""
    if not isinstance(bbox, list | tuple) or len(bbox) != 4:
        return bbox
    x, y, w, h = bbox
    try:
        return [x, y, x + w, y + h]
    except TypeError:  # a non-number
        return list(bbox)


def read_refcoco(
    root: str | os.PathLike,
    split: str | None = None,
    images: str | os.PathLike | None = None,
    check_images: bool = False,
    problems: Problems | None = None,
    dataset: str = DATASET,
    refs_file: str = REFS_FILE,
) -> list[Record]:
    """Records of one split (or all splits when ``split`` is None); ids ``<dataset>/<ref_id>/<sent_id>``."""
    root = Path(root)
    images = Path(images) if images is not None else root.parent / "coco" / "train2014"
    problems = problems or Problems()
    if split is not None and split not in SPLITS:
        raise DataError(f"{dataset}: unknown split {split!r} (choose from {', '.join(SPLITS)})")
    refs_path = root / refs_file
    refs = load_refs(refs_path)
    coco = load_instances(root / "instances.json")

    records: list[Record] = []
    checker = ImageChecker()
    for ref in tqdm(refs, desc=dataset, unit="ref", disable=None):
        if split is not None and ref["split"] != split:
            continue
        where = f"{refs_path}: ref {ref['ref_id']}"
        ann = coco.anns.get(ref["ann_id"])
        image = coco.imgs.get(ref["image_id"])
        if ann is None or image is None:
            problems.bad(
                "referred annotation or image missing",
                f"{where}: ann {ref['ann_id']} / image {ref['image_id']} not in instances.json",
            )
            continue
        if ann["image_id"] != ref["image_id"]:
            problems.bad(
                "referred annotation on another image",
                f"{where}: ann {ann['id']} is on image {ann['image_id']}, not {ref['image_id']}",
            )
            continue
        width, height = image["width"], image["height"]
        box = xywh_to_xyxy(ann["bbox"])
        if reason := box_problem(box):
            problems.bad(
                reason,
                f"{where}: ann {ann['id']} bbox {ann['bbox']} (xywh) in a {width}x{height} image: {reason}",
            )
            continue
        image_path = images / image["file_name"]
        if check_images and (error := checker.problem(image_path)):
            problems.bad(error.reason, f"{where}: {error}")
            continue
        others = [xywh_to_xyxy(a["bbox"]) for a in coco.imgToAnns[ann["image_id"]] if a["id"] != ann["id"]]
        others = [[float(v) for v in b] for b in others if box_problem(b) is None]
        category = coco.cats.get(ref.get("category_id", ann["category_id"]), {}).get("name")
        for sentence in ref["sentences"]:
            phrase = sentence["sent"]
            if not isinstance(phrase, str) or not phrase.strip():
                problems.bad("empty phrase", f"{where}: sentence {sentence['sent_id']} is empty")
                continue
            records.append(
                Record(
                    id=f"{dataset}/{ref['ref_id']}/{sentence['sent_id']}",
                    dataset=dataset,
                    split=ref["split"],
                    image=str(image_path),
                    width=width,
                    height=height,
                    phrase=phrase,
                    boxes=[[float(v) for v in box]],
                    category=category,
                    image_id=str(ref["image_id"]),
                    other_boxes=others,
                )
            )
    return records
