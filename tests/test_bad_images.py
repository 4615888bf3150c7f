"""Bad image files: truncated ones load (as released), undecodable ones are replaced in training
(counted, logged, in metrics.jsonl, resumed exactly), never at evaluation; prepare counts them."""

from __future__ import annotations

import io
import logging
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

from amc.data import Problems
from amc.data.datasets import MAX_CONSECUTIVE_REPLACEMENTS, CaptionDataset, PhraseBoxDataset
from amc.data.flickr30k import read_flickr30k
from amc.data.images import ImageReadError, image_size, load_image
from amc.data.transforms import EvalTransform, TrainTransform
from amc.data.vg import read_vg
from amc.evaluate import _ImageSet, check_images
from amc.io import DataError
from amc.records import Record, load_records, save_records
from tests.helpers import (
    box_object,
    checkpoint_state,
    read_metrics,
    subprocess_env,
    write_flickr,
    write_run_config,
    write_vg,
)


def jpeg_bytes(size=(64, 48)) -> bytes:
    """A noisy JPEG: its pixel data is most of the file, so cutting the file leaves the header whole."""
    buffer = io.BytesIO()
    Image.effect_noise(size, 64).convert("RGB").save(buffer, "JPEG", quality=95)
    return buffer.getvalue()


@pytest.fixture
def files(tmp_path) -> dict[str, Path]:
    paths = {name: tmp_path / f"{name}.jpg" for name in ("good", "truncated", "empty", "garbage")}
    data = jpeg_bytes()
    paths["good"].write_bytes(data)
    paths["truncated"].write_bytes(data[: len(data) * 2 // 3])
    paths["empty"].write_bytes(b"")
    paths["garbage"].write_bytes(b"this is not an image at all" * 40)
    return paths


def record(path: Path, id: str) -> Record:
    return Record(id, "vg", "train", str(path), 64, 48, "a red thing", [[5.0, 5.0, 40.0, 40.0]])


def test_a_truncated_jpeg_loads_as_released(files):
    image = load_image(files["truncated"], "r")
    assert image.size == (64, 48)
    item = PhraseBoxDataset([record(files["truncated"], "t")], TrainTransform(32, 16), seed=0)[0]
    assert item["replaced"] == 0 and torch.isfinite(item["image"]).all()


@pytest.mark.parametrize("bad", ["empty", "garbage"])
def test_an_undecodable_training_image_is_replaced_counted_and_logged(files, bad, caplog):
    records = [record(files[bad], "bad"), record(files["good"], "good"), record(files["truncated"], "trunc")]
    dataset = PhraseBoxDataset(records, TrainTransform(32, 16), seed=5)
    with caplog.at_level(logging.WARNING, logger="amc.data.datasets"):
        item = dataset[0]
    assert item["replaced"] >= 1 and item["index"] == 0
    assert (
        str(files[bad]) in caplog.text and "record bad" in caplog.text and "replaced by item" in caplog.text
    )
    # The replacement is a function of (seed, epoch, index): the same again, and a resume sees it too.
    again = PhraseBoxDataset(records, TrainTransform(32, 16), seed=5)[0]
    assert torch.equal(item["image"], again["image"]) and item["replaced"] == again["replaced"]
    assert dataset[1]["replaced"] == 0


def test_the_caption_dataset_replaces_too(files, tmp_path):
    items = [{"image": files["garbage"].name, "caption": "x"}, {"image": files["good"].name, "caption": "y"}]
    item = CaptionDataset(items, tmp_path, TrainTransform(32, 16), seed=0)[0]
    assert item["replaced"] >= 1 and item["text"] == "y"


def test_too_many_bad_images_in_a_row_is_a_clear_error(files, tmp_path):
    records = [record(tmp_path / "gone" / f"{i}.jpg", f"r{i}") for i in range(4)]  # the folder is missing
    with pytest.raises(DataError, match=rf"{MAX_CONSECUTIVE_REPLACEMENTS} images in a row .*image folder"):
        PhraseBoxDataset(records, TrainTransform(32, 16), seed=0)[2]


def test_evaluation_never_replaces(files):
    with pytest.raises(ImageReadError, match=rf"record bad: cannot read image {files['garbage']}"):
        _ImageSet([str(files["garbage"])], EvalTransform(16, "pil-bicubic"), ["record bad"])[0]
    records = [record(files["empty"], "bad"), record(files["good"], "good")]
    with pytest.raises(
        DataError, match=rf"record bad: cannot read image {files['empty']}.*--skip-missing-images"
    ):
        check_images(records, skip_missing=False)
    kept, skipped = check_images(records, skip_missing=True)
    assert [r.id for r in kept] == ["good"] and skipped == {"image unreadable": 1}


def test_header_check_reads_no_pixels(files):
    assert image_size(files["truncated"]) == (64, 48)  # the header is intact
    for bad in ("empty", "garbage"):
        with pytest.raises(ImageReadError) as error:
            image_size(files[bad])
        assert error.value.reason == "image unreadable"


def test_prepare_counts_unreadable_images(tmp_path):
    flickr = tmp_path / "flickr30k"
    write_flickr(flickr, "100", ["[/EN#1/people A man] ."], [box_object(["1"], 11, 21, 50, 80)])
    write_flickr(flickr, "101", ["[/EN#1/people A woman] ."], [box_object(["1"], 11, 21, 50, 80)])
    (flickr / "flickr30k-images").mkdir()
    Image.new("RGB", (200, 100)).save(flickr / "flickr30k-images" / "100.jpg")
    (flickr / "flickr30k-images" / "101.jpg").write_bytes(b"\xff\xd8 broken")
    problems = Problems()
    records = read_flickr30k(
        flickr, "test", flickr / "flickr30k-images", check_images=True, problems=problems
    )
    assert [r.image_id for r in records] == ["100"] and problems.skipped == {"image unreadable": 1}

    vg = tmp_path / "vg"
    write_vg(vg)
    (vg / "VG_100K").mkdir()
    (vg / "VG_100K_2").mkdir()
    Image.new("RGB", (100, 80)).save(vg / "VG_100K" / "1.jpg")
    (vg / "VG_100K_2" / "2.jpg").write_bytes(b"")
    problems = Problems()
    records = read_vg(vg, vg, check_images=True, problems=problems)
    assert {r.image_id for r in records} == {"1"} and problems.skipped["image unreadable"] == 1


# ------------------------------------------------------------------------------ a training run


def records_with_bad_images(tmp_path: Path, source: Path) -> Path:
    """The ci training records, every 4th pointing at an undecodable file."""
    records = load_records(source)
    (tmp_path / "bad").mkdir()
    for number, rec in enumerate(records):
        if number % 4 == 1:
            rec.image = str(tmp_path / "bad" / f"{number}.jpg")
            Path(rec.image).write_bytes(b"" if number % 8 == 1 else b"garbage" * 10)
    path = tmp_path / "vg-train-bad.jsonl"
    save_records(path, records)
    return path


@pytest.mark.slow
@pytest.mark.subprocess
def test_a_run_over_bad_images_reports_them_and_resumes_exactly(tmp_path, ci_data):
    data = records_with_bad_images(tmp_path, ci_data.vg_train)
    config = write_run_config(tmp_path / "run.yaml", ci_data, optim__max_steps=16, save_every_steps=3)
    config.write_text(config.read_text().replace(str(ci_data.vg_train), str(data)))
    command = [sys.executable, "-m", "amc", "train", "--config", str(config), "--resume"]

    reference = tmp_path / "uninterrupted"
    done = subprocess.run(
        [*command, "--out", str(reference)], env=subprocess_env(), capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "replaced by item" in done.stderr and "/bad/" in done.stderr
    metrics = read_metrics(reference / "metrics.jsonl")
    counts = [m["images_replaced"] for m in metrics]
    assert counts == sorted(counts) and counts[-1] > 0  # cumulative
    assert counts[-1] == done.stderr.count("replaced by item")  # every replacement is counted once

    interrupted = tmp_path / "interrupted"
    process = subprocess.Popen(
        [*command, "--out", str(interrupted)], env=subprocess_env(), stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 120
    while not (interrupted / "checkpoint_last.pt").exists():
        assert process.poll() is None, "the run ended before its first checkpoint"
        assert time.time() < deadline
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (interrupted / "checkpoint_final.pt").exists(), "killed too late to test resuming"
    saved = torch.load(interrupted / "checkpoint_last.pt", map_location="cpu", weights_only=False)
    assert saved["images_replaced"] == next(
        m["images_replaced"] for m in metrics if m["step"] == saved["step"]
    )

    subprocess.run(
        [*command, "--out", str(interrupted)], check=True, env=subprocess_env(), capture_output=True
    )
    a, b = (
        checkpoint_state(reference / "checkpoint_final.pt"),
        checkpoint_state(interrupted / "checkpoint_final.pt"),
    )
    assert all(torch.equal(a[key], b[key]) for key in a)
    resumed = read_metrics(interrupted / "metrics.jsonl")
    assert [(m["step"], m["loss"], m["images_replaced"]) for m in resumed] == [
        (m["step"], m["loss"], m["images_replaced"]) for m in metrics
    ]
