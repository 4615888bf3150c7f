"""Torch datasets: phrase + box (fine-tuning), captions (pretraining).

Training samples are reproducible: item ``i`` of epoch ``e`` draws all its randomness (which
box, which caption, flip, colour jitter) from a ``torch.Generator`` seeded from ``(seed, e, i)``,
so resuming a run at an epoch boundary reproduces its data exactly, whatever the number of
loader workers. Call ``set_epoch`` before creating each epoch's DataLoader iterator (with
``persistent_workers=False``, workers get a fresh copy of the dataset every epoch).

A multi-day run survives a bad image: when a training item's image is missing or cannot be
decoded, the item is replaced by another one, drawn from a generator seeded from
``(seed, e, i, attempt)`` (so a resumed run replaces it the same way), with a warning naming
the file; the item reports ``replaced`` (how many tries failed) and the trainer logs the running
total as ``images_replaced``. After :data:`MAX_CONSECUTIVE_REPLACEMENTS` failures in a row the
item raises (the image folder is probably missing). Evaluation (``amc.evaluate``, which loads
each image once) never replaces.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import Dataset

from amc.data.images import ImageReadError, load_image
from amc.data.transforms import TrainTransform
from amc.io import DataError, read_json
from amc.records import Record

log = logging.getLogger(__name__)

MAX_CONSECUTIVE_REPLACEMENTS = 10


def _hashed_seed(*parts) -> int:
    digest = hashlib.blake2b("/".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def sample_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """A generator seeded from (seed, epoch, index) by hashing, so nearby triples do not collide."""
    return torch.Generator().manual_seed(_hashed_seed(seed, epoch, index))


class _TrainingItems(Dataset):
    """What the training datasets share: the epoch, and replacing an item whose image is bad."""

    seed: int
    epoch: int = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _load(self, index: int) -> Image.Image:
        """The image of item ``index``; raises :class:`ImageReadError` when it is missing or unreadable."""
        raise NotImplementedError

    def _readable(self, index: int) -> tuple[int, Image.Image, int]:
        """(item to use, its image, failed tries): ``index`` itself unless its image is bad.

        The replacement keeps item ``index``'s generator for its box, caption and augmentation.
        """
        candidate, failures = index, 0
        while True:
            try:
                return candidate, self._load(candidate), failures
            except ImageReadError as error:
                failures += 1
                if failures >= MAX_CONSECUTIVE_REPLACEMENTS:
                    raise DataError(
                        f"{failures} images in a row could not be read for training item {index} "
                        f"(the last: {error}); is the image folder there?"
                    ) from None
                draw = torch.Generator().manual_seed(
                    _hashed_seed(self.seed, self.epoch, index, "replace", failures)
                )
                replacement = int(torch.randint(len(self), (), generator=draw))
                log.warning("%s; training item %d replaced by item %d", error, candidate, replacement)
                candidate = replacement


def _load_record_image(record: Record):
    image = load_image(record.image, f"record {record.id}")
    if image.size != (record.width, record.height):
        # The boxes are in the record's pixel coordinates; a different image would misplace them.
        raise DataError(
            f"record {record.id}: image {record.image} is {image.width}x{image.height}, the record says {record.width}x{record.height}"
        )
    return image


class PhraseBoxDataset(_TrainingItems):
    """Grounding records for fine-tuning: ``{"image", "mask", "text", "index", "replaced"}`` per item.

    As the released code: one of the record's boxes is drawn for the mask, then, when the record
    has several ``captions``, one of them for the text.
    """

    def __init__(self, records: list[Record], transform: TrainTransform, seed: int):
        self.records, self.transform, self.seed = records, transform, seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.records)

    def _load(self, index: int) -> Image.Image:
        return _load_record_image(self.records[index])

    def __getitem__(self, index: int) -> dict:
        used, image, replaced = self._readable(index)
        record = self.records[used]
        generator = sample_generator(self.seed, self.epoch, index)
        box = record.boxes[int(torch.randint(len(record.boxes), (), generator=generator))]
        text = record.phrase
        if len(record.captions) > 1:
            text = record.captions[int(torch.randint(len(record.captions), (), generator=generator))]
        sample = self.transform(image, box, text, generator)
        return {
            "image": sample.image,
            "mask": sample.mask,
            "text": sample.text,
            "index": index,
            "replaced": replaced,
        }


class CaptionDataset(_TrainingItems):
    """ALBEF-format captions for pretraining: ``{"image", "text", "index", "replaced"}`` per item (no mask).

    ``items`` come from :func:`load_captions`; image paths are relative to ``root`` (or absolute).
    A caption given as a list is one of them, chosen at random per sample (as ALBEF does).
    """

    def __init__(self, items: list[dict], root: str | os.PathLike, transform: TrainTransform, seed: int):
        self.items, self.root, self.transform, self.seed = items, Path(root), transform, seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.items)

    def _load(self, index: int) -> Image.Image:
        return load_image(self.root / self.items[index]["image"], f"caption item {index}")

    def __getitem__(self, index: int) -> dict:
        used, image, replaced = self._readable(index)
        item = self.items[used]
        generator = sample_generator(self.seed, self.epoch, index)
        caption = item["caption"]
        if isinstance(caption, list):
            caption = caption[int(torch.randint(len(caption), (), generator=generator))]
        sample = self.transform(image, None, caption, generator)
        return {"image": sample.image, "text": sample.text, "index": index, "replaced": replaced}


def load_captions(path: str | os.PathLike) -> list[dict]:
    """Read ALBEF's pretraining JSON: a list of ``{"image": path, "caption": text or [texts]}``."""
    data = read_json(path)
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of {{image, caption}}, got {type(data).__name__}")
    if not data:
        raise DataError(f"{path}: no captions (empty list)")
    for number, item in enumerate(data):
        where = f"{path}: entry {number}"
        if not isinstance(item, dict) or "image" not in item or "caption" not in item:
            raise DataError(f"{where}: expected an object with 'image' and 'caption'")
        if not isinstance(item["image"], str) or not item["image"]:
            raise DataError(f"{where}: 'image' must be a non-empty path")
        captions = item["caption"] if isinstance(item["caption"], list) else [item["caption"]]
        if not captions or not all(isinstance(c, str) and c.strip() for c in captions):
            raise DataError(f"{where}: empty caption")
    return data
