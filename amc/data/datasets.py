"""Torch datasets: phrase + box (fine-tuning), captions (pretraining), evaluation.

Training samples are reproducible: item ``i`` of epoch ``e`` draws all its randomness (which
box, flip, colour jitter) from a ``torch.Generator`` seeded from ``(seed, e, i)``, so resuming a
run at an epoch boundary reproduces its data exactly, whatever the number of loader workers.
Call ``set_epoch`` before creating each epoch's DataLoader iterator (with
``persistent_workers=False``, workers get a fresh copy of the dataset every epoch).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
from torch.utils.data import Dataset

from amc.data.images import load_image
from amc.data.transforms import EvalTransform, TrainTransform
from amc.io import DataError, read_json
from amc.records import Record


def sample_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """A generator seeded from (seed, epoch, index) by hashing, so nearby triples do not collide."""
    digest = hashlib.blake2b(f"{seed}/{epoch}/{index}".encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little") & (2**63 - 1))


def _load_record_image(record: Record):
    image = load_image(record.image, f"record {record.id}")
    if image.size != (record.width, record.height):
        # The boxes are in the record's pixel coordinates; a different image would misplace them.
        raise DataError(
            f"record {record.id}: image {record.image} is {image.width}x{image.height}, the record says {record.width}x{record.height}"
        )
    return image


class PhraseBoxDataset(Dataset):
    """Grounding records for fine-tuning: ``{"image", "mask", "text", "index"}`` per item.

    One of the record's boxes is chosen at random for the mask (as the released code does).
    """

    def __init__(self, records: list[Record], transform: TrainTransform, seed: int):
        self.records, self.transform, self.seed = records, transform, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict:
        record = self.records[index]
        generator = sample_generator(self.seed, self.epoch, index)
        box = record.boxes[int(torch.randint(len(record.boxes), (), generator=generator))]
        sample = self.transform(_load_record_image(record), box, record.phrase, generator)
        return {"image": sample.image, "mask": sample.mask, "text": sample.text, "index": index}


class CaptionDataset(Dataset):
    """ALBEF-format captions for pretraining: ``{"image", "text", "index"}`` per item (no mask).

    ``items`` come from :func:`load_captions`; image paths are relative to ``root`` (or absolute).
    A caption given as a list is one of them, chosen at random per sample (as ALBEF does).
    """

    def __init__(self, items: list[dict], root: str | os.PathLike, transform: TrainTransform, seed: int):
        self.items, self.root, self.transform, self.seed = items, Path(root), transform, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        item = self.items[index]
        generator = sample_generator(self.seed, self.epoch, index)
        caption = item["caption"]
        if isinstance(caption, list):
            caption = caption[int(torch.randint(len(caption), (), generator=generator))]
        image = load_image(self.root / item["image"], f"caption item {index}")
        sample = self.transform(image, None, caption, generator)
        return {"image": sample.image, "text": sample.text, "index": index}


class EvalDataset(Dataset):
    """Grounding records for evaluation: ``{"image", "text", "index"}``; no randomness."""

    def __init__(self, records: list[Record], transform: EvalTransform):
        self.records, self.transform = records, transform

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict:
        record = self.records[index]
        return {"image": self.transform(_load_record_image(record)), "text": record.phrase, "index": index}


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
