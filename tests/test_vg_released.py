"""The released AMC training files (the authors' VG phrase JSONs): reader, prepare, and the draws of
the training dataset (one box, then one caption, per sample, as released ``caption_dataset.py``)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch
from PIL import Image

from amc.cli import main
from amc.data import Problems
from amc.data.datasets import PhraseBoxDataset
from amc.data.prepare import prepare
from amc.data.transforms import TrainTransform
from amc.data.vg_released import FILES, clip_box, read_vg_released
from amc.io import DataError
from amc.records import Record, load_records, prepare_report_path
from tests.helpers import ATTRIBUTES, DESCRIPTIONS, REPO, SPATIAL, snakemake, write_images


@pytest.fixture
def released(tmp_path) -> tuple[Path, Path]:
    root, images = tmp_path / "amc", tmp_path / "vg"
    root.mkdir()
    write_images(images)
    for name, entries in zip(FILES, (DESCRIPTIONS, SPATIAL, ATTRIBUTES), strict=True):
        (root / name).write_text(json.dumps(entries))
    return root, images


def record(file, index, image, size, phrase, boxes, captions=(), image_id=None) -> Record:
    return Record(
        id=f"vg/{file}/{index}",
        dataset="vg",
        split="train",
        image=str(image),
        width=size[0],
        height=size[1],
        phrase=phrase,
        boxes=boxes,
        image_id=image_id,
        captions=list(captions),
    )


def test_clipping_is_the_released_one():
    # x1, y1 to [0, w-1] / [0, h-1]; x2, y2 to [1, w] / [1, h]; then int (towards zero)
    assert clip_box([-5.7, 3.2, 70.9, 20.5], 60, 50) == [0, 3, 60, 20]
    assert clip_box([80, 60, 90, 70], 60, 50) == [59, 49, 60, 50]
    assert clip_box([-9, -9, -3, -3], 60, 50) == [0, 0, 1, 1]
    assert clip_box([10.9, 10.1, 30.99, 40.5], 100, 80) == [10, 10, 30, 40]


def test_released_records_exactly(released):
    root, images = released
    one, two = images / "VG_100K/1.jpg", images / "VG_100K_2/2.jpg"
    problems = Problems()
    records = read_vg_released(root, images, problems=problems)
    assert records == [
        record(
            "vg_descriptions",
            0,
            one,
            (100, 80),
            "a red car",
            [[10, 10, 30, 40]],
            ["a red car", "the car"],
            "1",
        ),
        record(
            "vg_descriptions", 1, two, (60, 50), "a tree", [[0, 3, 60, 20], [10, 10, 20, 20]], image_id="2"
        ),
        # every box empty after clipping: kept, each with the released 1-pixel rule
        record("vg_descriptions", 2, two, (60, 50), "a dog", [[5, 5, 6, 9], [59, 2, 60, 3]], image_id="2"),
        record("vg_descriptions", 3, one, (100, 80), "mixed", [[20, 20, 40, 40]], image_id="1"),
        record(
            "vg_attributes_spatial", 0, one, (100, 80), "car left of tree", [[0, 0, 100, 80]], image_id="1"
        ),
        record(
            "vg_attributes_spatial",
            1,
            images / "more/5.jpg",
            (40, 30),
            "cat on mat",
            [[0, 0, 10, 10]],
            image_id="5",
        ),
        record("vg_attributes", 0, one, (100, 80), "red car", [[10, 10, 30, 40]], image_id="1"),
        record("vg_attributes", 1, one, (100, 80), "parked car", [[10, 10, 30, 40]], image_id="1"),
    ]
    assert all(isinstance(v, int) for r in records for box in r.boxes for v in box)
    assert problems.skipped == {
        "no boxes": 1,
        "non-numeric box": 2,
        "no usable box": 1,
        "image missing": 1,
        "image unreadable": 1,
    }
    assert problems.notes == {
        "entries whose boxes are all empty after clipping (1-pixel boxes)": 1,
        "empty boxes (after clipping) dropped from entries with other boxes": 1,
        "empty captions dropped from entries with other captions": 1,
    }


def test_prepare_cli_writes_records_and_their_skip_counts(released, tmp_path, caplog):
    root, images = released
    out = tmp_path / "records" / "vg-train.jsonl"
    argv = [
        "prepare",
        "vg",
        "--format",
        "released",
        "--root",
        str(root),
        "--images",
        str(images),
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    records = load_records(out)
    assert len(records) == 8 and records[0].captions == ["a red car", "the car"]
    assert Path(records[1].image) == (images / "VG_100K_2/2.jpg").resolve()
    report = json.loads(prepare_report_path(out).read_text())
    assert report["records"] == 8 and report["skipped"]["image unreadable"] == 1
    # --format released needs the image root, and names a missing default file
    assert main(argv[:6] + ["--out", str(out)]) == 2
    assert "needs --images" in caplog.text
    (root / "vg_attributes.json").unlink()
    assert main(argv) == 2
    assert "vg_attributes.json not found" in caplog.text
    # --files picks the files
    assert main([*argv, "--files", "vg_descriptions.json"]) == 0
    assert {r.id.split("/")[1] for r in load_records(out)} == {"vg_descriptions"}


def test_raw_format_on_the_released_files_points_at_the_option(released, tmp_path):
    root, images = released
    with pytest.raises(DataError, match="use --format released"):
        prepare("vg", root, tmp_path / "x.jsonl", images=images)


def test_exclusion_needs_image_data_and_maps_vg_ids_through_it(released, tmp_path):
    root, images = released
    ref_records = tmp_path / "refcoco+-testA.jsonl"
    row = {"id": "refcoco+/1/1", "dataset": "refcoco+", "split": "testA", "image": "x.jpg", "width": 10,
           "height": 10, "phrase": "man", "boxes": [[1, 1, 5, 5]], "image_id": "501"}  # fmt: skip
    ref_records.write_text(json.dumps(row) + "\n")
    common = dict(images=images, vg_format="released", exclude_records=[ref_records])
    with pytest.raises(DataError, match="needs VG's image_data.json"):
        prepare("vg", root, tmp_path / "vg.jsonl", **common)
    image_data = tmp_path / "image_data.json"
    image_data.write_text(json.dumps([{"image_id": 1, "coco_id": 501, "flickr_id": None}]))
    records, problems = prepare("vg", root, tmp_path / "vg.jsonl", image_data=image_data, **common)
    assert {r.image_id for r in records} == {"2", "5"}  # image 1 is COCO 501, an evaluation image
    assert problems.notes["image shared with an evaluation set (excluded)"] == 5
    assert (
        problems.notes["image not in image_data.json (cannot be matched to an evaluation image; kept)"] == 3
    )


# ------------------------------------------------------------------------------ the training draws


@pytest.fixture
def image_path(tmp_path) -> Path:
    path = tmp_path / "img.png"
    Image.new("RGB", (80, 60)).save(path)
    return path


NO_AUGMENT = dict(hflip_p=0.0, grayscale_p=0.0, color_jitter_p=0.0)
BOXES = [[0, 0, 20, 20], [40, 30, 80, 60]]


def draws(dataset: PhraseBoxDataset, epochs: int, index: int = 0) -> list[tuple[str, int]]:
    """(text, which box) of item ``index`` over ``epochs`` epochs."""
    out = []
    for epoch in range(epochs):
        dataset.set_epoch(epoch)
        item = dataset[index]
        out.append((item["text"], int(item["mask"][0, 0] < 0.5)))  # box 0 covers the top-left corner
    return out


def test_a_sample_draws_a_box_then_a_caption_reproducibly(image_path):
    captions = ["a red car", "the car", "a vehicle"]
    records = [
        Record("vg/d/0", "vg", "train", str(image_path), 80, 60, captions[0], BOXES, captions=captions)
    ]
    dataset = PhraseBoxDataset(records, TrainTransform(32, 16, **NO_AUGMENT), seed=3)
    seen = draws(dataset, 60)
    # every caption and every box turn up over the epochs, in every combination
    assert set(seen) == {(c, b) for c in captions for b in (0, 1)}
    counts = Counter(text for text, _ in seen)
    assert min(counts.values()) >= 10  # about uniform (60 draws of 3)
    # and the same (seed, epoch, index) gives the same draw
    again = PhraseBoxDataset(records, TrainTransform(32, 16, **NO_AUGMENT), seed=3)
    assert draws(again, 60) == seen
    other_seed = PhraseBoxDataset(records, TrainTransform(32, 16, **NO_AUGMENT), seed=4)
    assert draws(other_seed, 60) != seen


def test_a_record_with_one_caption_keeps_its_phrase_and_its_random_stream(image_path):
    """Records without ``captions`` draw exactly as before (box, then the transform)."""
    plain = [Record("r/0", "vg", "train", str(image_path), 80, 60, "a car", BOXES)]
    single = [Record("r/0", "vg", "train", str(image_path), 80, 60, "a car", BOXES, captions=["a car"])]
    a = PhraseBoxDataset(plain, TrainTransform(32, 16), seed=1)
    b = PhraseBoxDataset(single, TrainTransform(32, 16), seed=1)
    for epoch in range(5):
        a.set_epoch(epoch)
        b.set_epoch(epoch)
        assert a[0]["text"] == "a car" and torch.equal(a[0]["image"], b[0]["image"])
        assert torch.equal(a[0]["mask"], b[0]["mask"])


# ------------------------------------------------------------------------------ configuration


def test_paper_run_config_keeps_the_released_text_limits():
    from amc.run_config import load_run_config

    data = load_run_config(str(REPO / "config/runs/paper-finetune.yaml")).data
    assert (data.max_words, data.max_tokens) == (50, 25)  # configs/Pretrain.yaml, Pretrain.py


@pytest.mark.subprocess
def test_the_workflow_prepares_the_released_files_by_default(tmp_path):
    def prepare_command(target: str, *options: str) -> str:
        text = snakemake("-n", "--forceall", "-p", target, *options).stdout  # options take several values
        return next(line for line in text.splitlines() if "amc prepare vg" in line)

    for name, change in (
        ("raw", {"layout": {"vg": {"format": "raw", "root": "vg", "images": "vg"}}}),
        ("excluding", {"exclude_eval_images": True}),
    ):
        (tmp_path / f"{name}.yaml").write_text(json.dumps({"data": change}))
    configs = ("--configfile", "config/config.yaml")
    # The paper config (with evaluation images excluded, which maps VG ids through image_data.json);
    # the demo and ci configs take the same default (the ci run goes through it end to end).
    paper = prepare_command("data/records/vg-train.jsonl", *configs, str(tmp_path / "excluding.yaml"))
    assert "--format released --root data/raw/amc --images data/raw/vg" in paper
    assert "--image-data data/raw/vg/image_data.json" in paper and "--exclude-records" in paper
    # The raw rebuild is the option.
    raw = prepare_command("data/records/vg-train.jsonl", *configs, str(tmp_path / "raw.yaml"))
    assert "--format raw --root data/raw/vg" in raw
