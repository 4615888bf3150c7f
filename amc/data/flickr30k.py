"""Reader of Flickr30k Entities (``Sentences/*.txt``, ``Annotations/*.xml``, split files).

Layout under ``root``: ``Sentences/<id>.txt``, ``Annotations/<id>.xml``, ``train.txt``,
``val.txt``, ``test.txt``; images default to ``root/flickr30k-images/<id>.jpg``.

The evaluation protocol (``docs/data.md``): every phrase occurrence in every sentence is one
record; its boxes are ALL boxes of the phrase's entity id; XML coordinates are 1-based and are
shifted by -1; entities without a box (scene, not-visual) are left out, as the released
evaluation leaves them out; one XML object may carry several entity names. Parsing follows the
dataset's own ``flickr30k_entities_utils.py``.

A box is dropped (and counted) only when it cannot be tested at all: a coordinate that is not a
finite number, or x2 <= x1 / y2 <= y1. The entity keeps its other boxes; a box reaching outside
the image is kept as annotated. A phrase whose entity lost ALL its boxes this way is counted as
bad, apart from the entities that never had a box.
"""

from __future__ import annotations

import logging
import os
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from amc.data import Problems, box_problem
from amc.data.images import ImageChecker
from amc.io import DataError, read_text
from amc.records import Record

log = logging.getLogger(__name__)

DATASET = "flickr30k"
SPLITS = ("train", "val", "test")
_PHRASE_START = re.compile(r"^\[/EN#(\d+)/(.*)$")


@dataclass
class Phrase:
    entity_id: str
    types: list[str]  # e.g. ["people"], or ["people", "bodyparts"]
    text: str  # the phrase's words, joined by one space, as in the source
    first_word: int  # index of its first word in the sentence


@dataclass
class Annotation:
    width: int
    height: int
    # One entry per XML object that has a box: (entity names, [x1, y1, x2, y2] 0-based).
    objects: list[tuple[list[str], list[float]]] = field(default_factory=list)
    bad_entities: set[str] = field(default_factory=set)  # entities that lost a box we had to drop

    def boxes(self, entity_id: str) -> list[list[float]]:
        return [box for names, box in self.objects if entity_id in names]

    def other_boxes(self, entity_id: str) -> list[list[float]]:
        return [box for names, box in self.objects if entity_id not in names]


def parse_sentence(line: str, where: str) -> tuple[str, list[Phrase]]:
    """The plain sentence and its marked phrases, from a line like ``[/EN#12/people A man] runs .``"""
    words: list[str] = []
    phrases: list[Phrase] = []
    current: Phrase | None = None
    for token in line.split():
        if current is None and token.startswith("["):
            match = _PHRASE_START.match(token.rstrip("]"))
            if match is None:
                raise DataError(
                    f"{where}: malformed phrase marker {token!r} (expected [/EN#<id>/<type> ...])"
                )
            current = Phrase(match.group(1), match.group(2).split("/"), "", len(words))
            if token.endswith("]"):  # "[/EN#5/people]": a marker with no words at all
                phrases.append(current)
                current = None
            continue
        if current is not None:
            closes = token.endswith("]")
            word = token[:-1] if closes else token
            if word:
                words.append(word)
                current.text = f"{current.text} {word}" if current.text else word
            if closes:
                phrases.append(current)
                current = None
        else:
            words.append(token)
    if current is not None:
        raise DataError(f"{where}: phrase [/EN#{current.entity_id}/...] is never closed with ']'")
    return " ".join(words), phrases


def parse_annotation(path: Path, problems: Problems) -> Annotation:
    """Boxes by entity from one XML file; bad boxes are reported to ``problems`` and dropped."""
    try:
        root = ET.parse(path).getroot()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except ET.ParseError as error:
        raise DataError(f"{path}: malformed XML ({error})") from None
    try:
        width = int(root.findtext("size/width"))
        height = int(root.findtext("size/height"))
    except (TypeError, ValueError):
        raise DataError(f"{path}: missing or non-integer <size><width>/<height>") from None
    if width < 1 or height < 1:
        raise DataError(f"{path}: <size> {width}x{height} is not an image size")
    annotation = Annotation(width, height)
    for number, obj in enumerate(root.findall("object"), start=1):
        names = [n.text.strip() for n in obj.findall("name") if n.text and n.text.strip()]
        if not names:
            raise DataError(f"{path}: object {number} has no <name>")
        bndbox = obj.find("bndbox")
        if bndbox is None:  # <nobndbox>/<scene> objects: entities without a box
            continue
        texts = [bndbox.findtext(tag) for tag in ("xmin", "ymin", "xmax", "ymax")]
        # 1-based pixel coordinates in the XML; shifted by -1 as the dataset's own loader does.
        box = [None if value is None else value - 1 for value in map(_number, texts)]
        if reason := box_problem(box):
            problems.bad(
                reason,
                f"{path}: object {number} (entity {', '.join(names)}): <bndbox> {texts} -> {box} (0-based) in a "
                f"{width}x{height} image: {reason}; dropped, the entity keeps its other boxes",
            )
            annotation.bad_entities.update(names)
            continue
        annotation.objects.append((names, box))
    return annotation


def _number(text: str | None) -> float | None:
    try:
        return float(text.strip())
    except (AttributeError, ValueError):
        return None


def read_split_ids(root: Path, split: str) -> list[str]:
    path = root / f"{split}.txt"
    return [line.strip() for line in read_text(path, "split file").splitlines() if line.strip()]


def read_flickr30k(
    root: str | os.PathLike,
    split: str | None = None,
    images: str | os.PathLike | None = None,
    check_images: bool = False,
    problems: Problems | None = None,
) -> list[Record]:
    """Records of one split (or of train, val and test when ``split`` is None).

    Ids are ``flickr30k/<image id>/<sentence index>/<phrase index>`` (indices count every
    non-empty line and every marked phrase, kept or not, so they do not depend on what is skipped).
    """
    root = Path(root)
    images = Path(images) if images is not None else root / "flickr30k-images"
    problems = problems or Problems()
    if split is not None and split not in SPLITS:
        raise DataError(f"flickr30k: unknown split {split!r} (choose from {', '.join(SPLITS)})")
    records: list[Record] = []
    checker = ImageChecker() if check_images else None
    for current in [split] if split else list(SPLITS):
        ids = read_split_ids(root, current)
        for image_id in tqdm(ids, desc=f"flickr30k {current}", unit="img", disable=None):
            records += _image_records(root, images, image_id, current, checker, problems)
    return records


def _image_records(
    root: Path, images: Path, image_id: str, split: str, checker: ImageChecker | None, problems: Problems
) -> list[Record]:
    image_path = images / f"{image_id}.jpg"
    if checker is not None and (error := checker.problem(image_path)):
        problems.bad(error.reason, f"flickr30k image {image_id}: {error}")
        return []
    annotation = parse_annotation(root / "Annotations" / f"{image_id}.xml", problems)
    sentence_path = root / "Sentences" / f"{image_id}.txt"
    lines = [
        (n, line) for n, line in enumerate(read_text(sentence_path).splitlines(), start=1) if line.strip()
    ]
    records = []
    for sentence_index, (line_number, line) in enumerate(lines):
        where = f"{sentence_path}:{line_number}"
        _sentence, phrases = parse_sentence(line, where)
        for phrase_index, phrase in enumerate(phrases):
            entity = phrase.entity_id
            if not phrase.text.strip():
                problems.bad(
                    "empty phrase", f"{where}: phrase {phrase_index} ([/EN#{entity}/...]) has no words"
                )
            elif not (boxes := annotation.boxes(entity)):
                if entity in annotation.bad_entities:
                    problems.bad(
                        "phrase of an entity whose boxes are all bad",
                        f"{where}: phrase {phrase.text!r}: every box of entity {entity} was dropped",
                    )
                else:
                    problems.note("phrase whose entity has no box (scene, notvisual)")
            else:
                records.append(
                    Record(
                        id=f"{DATASET}/{image_id}/{sentence_index}/{phrase_index}",
                        dataset=DATASET,
                        split=split,
                        image=str(image_path),
                        width=annotation.width,
                        height=annotation.height,
                        phrase=phrase.text,
                        boxes=boxes,
                        category="/".join(phrase.types),
                        image_id=image_id,
                        other_boxes=annotation.other_boxes(entity),
                    )
                )
    return records
