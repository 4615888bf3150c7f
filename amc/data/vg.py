"""Reader of Visual Genome (v1.2 / v1.4 layout) into training records.

Layout under ``root``: ``image_data.json``, ``region_descriptions.json``, ``attributes.json``,
``relationships.json``. Images live under ``images`` (default ``root``) at the path the image's
``url`` ends with (``VG_100K/<id>.jpg`` or ``VG_100K_2/<id>.jpg``).

Three kinds of phrase, as the released AMC code trains on:

* ``region``:    a region description with its box;
* ``attribute``: ``"<attribute> <object name>"`` for every attribute of an object, its box;
* ``relation``:  ``"<subject> <predicate> <object>"``, the SUBJECT's box.

Ids are ``vg/<image_id>/<kind>/<n>``, ``n`` counting that image's entries of that kind in file
order. A box reaching more than a pixel outside its image is skipped as bad (the released
training data, :mod:`amc.data.vg_released`, is clipped instead). VG shares images with COCO and Flickr30k; ``exclude_coco_ids`` / ``exclude_flickr_ids``
leave out images whose ``coco_id`` / ``flickr_id`` is among them (the released code does not).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path

from tqdm import tqdm

from amc.data import Problems, box_problem, is_id, is_size, outside_image
from amc.data.images import ImageChecker
from amc.io import DataError, read_json
from amc.records import Record

log = logging.getLogger(__name__)

DATASET = "vg"
KINDS = ("region", "attribute", "relation")
FILES = {
    "region": "region_descriptions.json",
    "attribute": "attributes.json",
    "relation": "relationships.json",
}
LIST_KEYS = {"region": "regions", "attribute": "attributes", "relation": "relationships"}


def _list_file(path: Path) -> list:
    data = read_json(path)
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list, got {type(data).__name__}")
    return data


def _image_path(images: Path, entry: dict) -> Path:
    url = entry.get("url") or ""
    parts = url.rstrip("/").split("/")
    if len(parts) >= 2 and parts[-1]:
        return images / parts[-2] / parts[-1]
    return images / "VG_100K" / f"{_image_id(entry)}.jpg"


def _image_id(entry: dict):
    """VG names an image's id ``image_id`` in most files and ``id`` in region_descriptions.json."""
    return entry.get("image_id", entry.get("id"))


def _text(value) -> str:
    """A phrase part: text as written, anything else (null, a number) as empty, so the phrase is
    counted as an empty phrase rather than read as "None"."""
    return value.strip() if isinstance(value, str) else ""


def _name(obj: dict) -> str:
    """An object's name: VG writes either ``name`` or a list ``names``."""
    if not isinstance(obj, dict):
        raise TypeError(f"an object is {obj!r}, not a mapping")
    if "names" in obj and obj["names"]:
        return _text(obj["names"][0])
    return _text(obj.get("name", ""))


def _xyxy(obj: dict, w_key: str, h_key: str) -> list[float]:
    return [
        float(obj["x"]),
        float(obj["y"]),
        float(obj["x"]) + float(obj[w_key]),
        float(obj["y"]) + float(obj[h_key]),
    ]


def read_vg(
    root: str | os.PathLike,
    images: str | os.PathLike | None = None,
    check_images: bool = False,
    kinds: Iterable[str] = KINDS,
    exclude_coco_ids: Iterable[str] = (),
    exclude_flickr_ids: Iterable[str] = (),
    problems: Problems | None = None,
) -> list[Record]:
    """Training records (split ``train``) of the chosen ``kinds`` of phrase."""
    root = Path(root)
    images = Path(images) if images is not None else root
    problems = problems or Problems()
    kinds = tuple(kinds)
    if unknown := [k for k in kinds if k not in KINDS]:
        raise DataError(f"vg: unknown kind(s) {', '.join(unknown)} (choose from {', '.join(KINDS)})")
    exclude_coco, exclude_flickr = {str(i) for i in exclude_coco_ids}, {str(i) for i in exclude_flickr_ids}

    image_data_path = root / "image_data.json"
    if not image_data_path.is_file() and (root / "vg_descriptions.json").is_file():
        raise DataError(
            f"{image_data_path}: not found; {root} holds the released phrase files: use --format released"
        )
    image_info: dict = {}
    for number, entry in enumerate(_list_file(image_data_path)):
        image_id = _image_id(entry) if isinstance(entry, dict) else None
        if not is_id(image_id) or not is_size(entry.get("width")) or not is_size(entry.get("height")):
            raise DataError(
                f"{image_data_path}: entry {number}: needs an image_id and a width and height in pixels, got {entry!r}"
            )
        if not isinstance(entry.get("url") or "", str):
            raise DataError(f"{image_data_path}: entry {number}: url must be text")
        image_info[image_id] = entry

    # Which images to use: not excluded, and (when checking) with a readable image file.
    checker = ImageChecker()
    usable: dict = {}
    for image_id, entry in image_info.items():
        coco_id, flickr_id = entry.get("coco_id"), entry.get("flickr_id")
        if (coco_id is not None and str(coco_id) in exclude_coco) or (
            flickr_id is not None and str(flickr_id) in exclude_flickr
        ):
            problems.note("image shared with an evaluation set (excluded)")
            continue
        path = _image_path(images, entry)
        if check_images and (error := checker.problem(path)):
            problems.bad(error.reason, f"{image_data_path}: image {image_id}: {error}")
            continue
        usable[image_id] = (entry, path)

    records: list[Record] = []
    for kind in kinds:
        path = root / FILES[kind]
        for number, item in enumerate(tqdm(_list_file(path), desc=f"vg {kind}s", unit="img", disable=None)):
            image_id = _image_id(item) if isinstance(item, dict) else None
            entries = item.get(LIST_KEYS[kind]) if isinstance(item, dict) else None
            if not is_id(image_id) or not isinstance(entries, list):
                raise DataError(f"{path}: entry {number} lacks its image id or its {LIST_KEYS[kind]!r} list")
            if image_id not in image_info:
                problems.bad(
                    "image not in image_data.json",
                    f"{path}: entry {number}: image {image_id} is not in {image_data_path}",
                )
                continue
            if image_id not in usable:
                continue
            entry, image_path = usable[image_id]
            try:
                phrases = list(_phrases(kind, entries))
            except (KeyError, TypeError, ValueError) as error:
                raise DataError(f"{path}: image {image_id}: malformed {kind} entry ({error!r})") from None
            for n, (phrase, box, category) in enumerate(phrases):
                record_id = f"{DATASET}/{image_id}/{kind}/{n}"
                if not phrase.strip():
                    problems.bad("empty phrase", f"{path}: {record_id}: empty phrase")
                    continue
                reason = box_problem(box)
                if reason is None and outside_image(box, entry["width"], entry["height"]):
                    reason = "box outside image"
                if reason:
                    problems.bad(
                        reason,
                        f"{path}: {record_id} ({phrase!r}): box {box} in a {entry['width']}x{entry['height']} image: {reason}",
                    )
                    continue
                records.append(
                    Record(
                        id=record_id,
                        dataset=DATASET,
                        split="train",
                        image=str(image_path),
                        width=entry["width"],
                        height=entry["height"],
                        phrase=phrase,
                        boxes=[box],
                        category=category,
                        image_id=str(image_id),
                    )
                )
    return records


def _phrases(kind: str, entries: list[dict]) -> Iterable[tuple[str, list[float], str | None]]:
    """(phrase, xyxy box, category) for one image's entries of one kind, in file order.

    A phrase with an empty part comes out empty, so the caller reports it as an empty phrase.
    """
    for entry in entries:
        if not isinstance(entry, dict):
            raise TypeError(f"an entry is {entry!r}, not a mapping")
        if kind == "region":
            yield _text(entry["phrase"]), _xyxy(entry, "width", "height"), None
        elif kind == "attribute":
            name = _name(entry)
            for attribute in entry.get("attributes") or []:
                attribute = _text(attribute)
                yield (
                    (f"{attribute} {name}" if attribute and name else ""),
                    _xyxy(entry, "w", "h"),
                    name or None,
                )
        else:
            subject, predicate, obj = (
                _name(entry["subject"]),
                _text(entry["predicate"]),
                _name(entry["object"]),
            )
            phrase = f"{subject} {predicate} {obj}" if subject and predicate and obj else ""
            yield phrase, _xyxy(entry["subject"], "w", "h"), subject or None
