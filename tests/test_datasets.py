"""Datasets: reproducible samples from (seed, epoch, index), one box at random, clear image errors."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image, ImageDraw

from amc.data.datasets import CaptionDataset, PhraseBoxDataset, load_captions
from amc.data.transforms import EvalTransform, TrainTransform
from amc.evaluate import _ImageSet
from amc.io import DataError
from amc.records import Record

NO_AUGMENT = dict(hflip_p=0.0, grayscale_p=0.0, color_jitter_p=0.0)


@pytest.fixture
def image_path(tmp_path):
    path = tmp_path / "img.png"
    image = Image.new("RGB", (80, 60))
    draw = ImageDraw.Draw(image)
    draw.rectangle((5, 5, 24, 24), fill=(255, 0, 0))
    draw.rectangle((50, 30, 74, 54), fill=(0, 0, 255))
    image.save(path)
    return path


def record(path, boxes, id="r/0", width=80, height=60):
    return Record(
        id=id,
        dataset="vg",
        split="train",
        image=str(path),
        width=width,
        height=height,
        phrase="a red square",
        boxes=boxes,
    )


def test_phrase_box_items_are_reproducible_per_seed_epoch_index(image_path):
    records = [record(image_path, [[5, 5, 25, 25], [50, 30, 75, 55]], id=f"r/{i}") for i in range(6)]
    dataset = PhraseBoxDataset(records, TrainTransform(image_res=32, mask_size=16), seed=7)
    first = [dataset[i] for i in range(6)]
    again = PhraseBoxDataset(records, TrainTransform(image_res=32, mask_size=16), seed=7)
    for i, item in enumerate(first):
        other = again[i]
        assert item["index"] == i and item["text"] == "a red square"
        assert torch.equal(item["image"], other["image"]) and torch.equal(item["mask"], other["mask"])
    # Another epoch draws other boxes/flips for some items; coming back to epoch 0 reproduces it.
    dataset.set_epoch(1)
    epoch1 = [dataset[i] for i in range(6)]
    assert any(
        not torch.equal(a["mask"], b["mask"]) or not torch.equal(a["image"], b["image"])
        for a, b in zip(first, epoch1, strict=True)
    )
    dataset.set_epoch(0)
    assert all(torch.equal(dataset[i]["mask"], first[i]["mask"]) for i in range(6))


def test_one_of_the_boxes_is_chosen_at_random(image_path):
    boxes = [[5, 5, 25, 25], [50, 30, 75, 55]]
    dataset = PhraseBoxDataset(
        [record(image_path, boxes)], TrainTransform(image_res=40, mask_size=40, **NO_AUGMENT), seed=0
    )
    left_half = []
    for epoch in range(12):
        dataset.set_epoch(epoch)
        mask = dataset[0]["mask"]
        columns = (mask > 0.5).any(0).nonzero().flatten().float()
        # Exactly one box: either the left one or the right one, never both.
        assert columns.max() - columns.min() < 15
        left_half.append(bool(columns.mean() < 20))
    assert set(left_half) == {True, False}


def test_missing_or_unreadable_image_names_record_and_path(tmp_path, image_path):
    transform = TrainTransform(32, 16)
    missing = tmp_path / "nope.jpg"
    with pytest.raises(DataError, match=r"record r/9.*nope\.jpg"):
        PhraseBoxDataset([record(missing, [[1, 1, 5, 5]], id="r/9")], transform, seed=0)[0]
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    with pytest.raises(DataError, match=r"record r/8.*broken\.jpg"):
        PhraseBoxDataset([record(broken, [[1, 1, 5, 5]], id="r/8")], transform, seed=0)[0]
    with pytest.raises(DataError, match="80x60, the record says 100x60"):
        PhraseBoxDataset([record(image_path, [[1, 1, 5, 5]], width=100)], transform, seed=0)[0]


def test_images_are_converted_to_rgb(tmp_path):
    gray, rgba = tmp_path / "g.png", tmp_path / "a.png"
    Image.new("L", (30, 20), 128).save(gray)
    Image.new("RGBA", (30, 20), (10, 20, 30, 0)).save(rgba)
    for path in (gray, rgba):
        image = _ImageSet([str(path)], EvalTransform(16, "pil-bicubic"), ["record r"])[0]
        assert image.shape == (3, 16, 16)


def test_caption_dataset_has_no_mask_and_is_reproducible(tmp_path, image_path):
    items = [
        {"image": image_path.name, "caption": "a red square"},
        {"image": image_path.name, "caption": ["one", "two"]},
    ]
    dataset = CaptionDataset(items, tmp_path, TrainTransform(32, 16), seed=1)
    item = dataset[0]
    assert set(item) == {"image", "text", "index", "replaced"} and item["text"] == "a red square"
    assert item["replaced"] == 0
    assert torch.equal(
        item["image"], CaptionDataset(items, tmp_path, TrainTransform(32, 16), seed=1)[0]["image"]
    )
    texts = set()
    for epoch in range(10):
        dataset.set_epoch(epoch)
        texts.add(dataset[1]["text"])
    assert texts == {"one", "two"}
    with pytest.raises(DataError, match=r"caption item 0.*gone\.jpg"):
        CaptionDataset([{"image": "gone.jpg", "caption": "x"}], tmp_path, TrainTransform(32, 16), seed=1)[0]


def test_load_captions_reads_albef_format_and_rejects_bad_files(tmp_path):
    good = tmp_path / "good.json"
    good.write_text(json.dumps([{"image": "a.jpg", "caption": "a red circle"}]))
    assert load_captions(good) == [{"image": "a.jpg", "caption": "a red circle"}]
    cases = {
        "{not json": "not valid JSON",
        json.dumps({"image": "a.jpg"}): "expected a JSON list",
        json.dumps([]): "no captions",
        json.dumps([{"image": "a.jpg"}]): "entry 0: expected an object with 'image' and 'caption'",
        json.dumps(
            [{"image": "a.jpg", "caption": "ok"}, {"image": "b.jpg", "caption": " "}]
        ): "entry 1: empty caption",
        json.dumps([{"image": "", "caption": "x"}]): "entry 0: 'image' must be",
    }
    for number, (text, message) in enumerate(cases.items()):
        path = tmp_path / f"bad{number}.json"
        path.write_text(text)
        with pytest.raises(DataError, match=message):
            load_captions(path)
    with pytest.raises(DataError, match="file not found"):
        load_captions(tmp_path / "missing.json")
