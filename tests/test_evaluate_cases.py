"""Evaluation keeps every case the released protocol counts: boxes outside the image stay as
annotated, a bad box does not drop its entity's other boxes, and what prepare skipped is in the
result, by reason, apart from what evaluate skipped itself."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from PIL import Image

from amc.cli import main as amc_main
from amc.evaluate import _score, score_cases
from amc.io import DataError
from amc.metrics import classify_miss, energy_in_boxes, pointing_point, upsample_heatmap
from amc.records import Record, load_records, prepare_report_path
from tests.helpers import box_object, evaluate_flickr, write_flickr


def test_a_box_reaching_outside_the_image_is_kept_and_scored_as_annotated(tmp_path):
    row = {"id": "refcoco+/1/1", "dataset": "refcoco+", "split": "testA", "image": "a.jpg", "width": 40,
           "height": 30, "phrase": "the corner", "boxes": [[-4, -4, 3, 3]]}  # fmt: skip
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps(row) + "\n")
    (record,) = load_records(path)
    assert record.boxes == [[-4.0, -4.0, 3.0, 3.0]]  # not rejected, not clipped
    # A map whose maximum lies on the image's top row: that point is strictly inside the box as
    # annotated, and would not be inside the box clipped to the image ([0, 0, 3, 3]: 0 < 0 is false).
    heatmap = -torch.arange(6.0)[:, None] - torch.arange(6.0)[None, :]
    case = _score(record, heatmap, None)
    assert case.point[1] == 0 and case.point[0] < 3 and case.hit
    clipped = Record(**{**vars(record), "boxes": [[0.0, 0.0, 3.0, 3.0]]})
    assert not _score(clipped, heatmap, None).hit


def test_scoring_a_batch_equals_scoring_each_case_alone():
    """score_cases upsamples the maps of one image size together: the same points and energies, bit for
    bit, as upsampling each map alone (amc.metrics.pointing_point), in the records' order."""
    generator = torch.Generator().manual_seed(0)
    sizes = [(120, 97), (333, 500), (120, 97), (64, 64), (333, 500), (120, 97)] * 5
    records = [
        Record(id=f"c{i}", dataset="flickr30k", split="test", image=f"{w}x{h}.jpg", width=w, height=h,
               phrase="a thing", boxes=[[10.0, 10.0, 60.0, 50.0]], other_boxes=[[0.0, 0.0, 30.0, 30.0]])
        for i, (w, h) in enumerate(sizes)
    ]  # fmt: skip
    heatmaps = torch.rand(len(records), 12, 12, generator=generator) * 1e-3
    heatmaps[3] = heatmaps[3].round(decimals=3)  # ties
    cases = score_cases(records, heatmaps)
    assert [case.id for case in cases] == [record.id for record in records]
    for record, heatmap, case in zip(records, heatmaps, cases, strict=True):
        point = pointing_point(heatmap, record.height, record.width)
        assert tuple(case.point) == point
        assert case.miss == classify_miss(point, record.boxes, record.other_boxes)
        assert case.hit == (case.miss is None)
        energy = energy_in_boxes(upsample_heatmap(heatmap, record.height, record.width), record.boxes)
        assert case.energy is not None and case.energy == round(energy, 6)


def test_prepare_skip_counts_reach_the_result(tmp_path, ci_data, random_checkpoint):
    root = tmp_path / "flickr30k"
    write_flickr(
        root,
        "300",
        ["[/EN#1/people A man] with [/EN#2/people a boy] near [/EN#3/scene the sea] ."],
        [
            box_object(["1"], 11, 21, 50, 80),
            box_object(["2"], 60, 10, 40, 50),  # x2 <= x1: dropped, entity 2 keeps its other box
            box_object(["2"], 70, 10, 230, 50),  # reaches outside the 200 px image: kept
            "  <object><name>3</name><nobndbox>0</nobndbox><scene>1</scene></object>",
        ],
    )
    (root / "flickr30k-images").mkdir()
    Image.new("RGB", (200, 100), (40, 80, 120)).save(root / "flickr30k-images" / "300.jpg")
    records = tmp_path / "records" / "flickr30k-test.jsonl"
    argv = ["prepare", "flickr30k", "--root", root, "--images", root / "flickr30k-images", "--split", "test"]
    assert amc_main([*map(str, argv), "--out", str(records)]) == 0
    assert [r.boxes for r in load_records(records)] == [
        [[10.0, 20.0, 49.0, 79.0]],
        [[69.0, 9.0, 229.0, 49.0]],
    ]

    out = tmp_path / "result.json"
    assert evaluate_flickr(records, random_checkpoint, ci_data.vocab, out) == 0
    summary = json.loads(out.read_text())["summary"]
    assert summary["n_cases"] == 2 and summary["skipped"] == {}
    assert summary["skipped_in_prepare"]["skipped"] == {"degenerate box": 1}
    assert summary["skipped_in_prepare"]["left_out"] == {
        "phrase whose entity has no box (scene, notvisual)": 1
    }

    # Records that are not what prepare wrote: the counts are unknown, not wrong.
    edited = tmp_path / "edited" / "flickr30k-test.jsonl"
    edited.parent.mkdir()
    edited.write_text(records.read_text().splitlines()[0].replace('"image":"', '"image":"../records/') + "\n")
    shutil.copy(prepare_report_path(records), prepare_report_path(edited))
    assert evaluate_flickr(edited, random_checkpoint, ci_data.vocab, out) == 0
    summary = json.loads(out.read_text())["summary"]
    assert summary["n_cases"] == 1 and summary["skipped_in_prepare"] is None


@pytest.mark.parametrize(
    ("box", "problem"),
    [
        ([1, 1, 1, 5], "is empty"),
        ([1, 6, 5, 5], "is empty"),
        ([1, "2", 5, 5], "other than numbers"),
        ([1, True, 5, 5], "other than numbers"),
        ([1, 1, float("inf"), 5], "non-finite"),
        ([1, 1, 5], r"is not \[x1, y1, x2, y2\]"),
    ],
)
def test_a_record_box_must_be_four_finite_numbers_with_an_area(tmp_path, box, problem):
    row = {"id": "r/1", "dataset": "flickr30k", "split": "test", "image": "a.jpg", "width": 40,
           "height": 30, "phrase": "a cat", "boxes": [[0, 0, 10, 10], box]}  # fmt: skip
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps(row) + "\n")
    with pytest.raises(DataError, match=rf"r\.jsonl: record 1: boxes\[1\]: box .* {problem}"):
        load_records(path)


def test_a_point_in_any_of_the_entitys_boxes_is_a_hit_and_a_miss_is_classified():
    """A Flickr30k entity has several boxes: the point may fall in any of them. A miss inside
    another object of the image is 'other_object', elsewhere 'background'."""
    heatmap = torch.zeros(4, 4)
    heatmap[3, 3] = 1.0  # bottom-right cell: the point lands near (35, 35) of a 40 x 40 image
    record = Record("flickr30k/1/0", "flickr30k", "test", "a.jpg", 40, 40, "two dogs",
                    [[0, 0, 10, 10], [25, 25, 40, 40]], category="animals", other_boxes=[[0, 20, 10, 40]])  # fmt: skip
    case = _score(record, heatmap, None)
    assert case.hit and case.miss is None and case.category == "animals" and case.id == record.id
    assert 25 < case.point[0] < 40 and 25 < case.point[1] < 40 and case.box_hit is None
    first_only = Record(**{**vars(record), "boxes": [[0, 0, 10, 10]]})
    assert _score(first_only, heatmap, None).miss == "background"
    inside_other = Record(**{**vars(first_only), "other_boxes": [[20, 20, 40, 40]]})
    assert _score(inside_other, heatmap, None).miss == "other_object"
    # with proposals: the box metric on the first box, False for an image without proposals
    proposals = {"7": [[25.0, 25.0, 15.0, 15.0]]}
    boxed = Record(**{**vars(record), "boxes": [[25, 25, 40, 40]], "image_id": "7"})
    assert _score(boxed, heatmap, proposals).box_hit is True
    assert _score(Record(**{**vars(boxed), "image_id": "8"}), heatmap, proposals).box_hit is False
    # a map with no positive value has no energy to share: undefined, not an error
    assert _score(record, -torch.ones(4, 4), None).energy is None


def test_record_images_resolve_against_the_records_folder(tmp_path):
    """Each relative image path resolves (symlinks followed) against the records file's folder, once
    per distinct path; absolute paths are kept."""
    (tmp_path / "real").mkdir()
    (tmp_path / "records").mkdir()
    (tmp_path / "records" / "link").symlink_to(tmp_path / "real")
    images = ["../real/a.jpg", "link/b.jpg", "../real/a.jpg", "/elsewhere/c.jpg", "link/b.jpg", "d.jpg"]
    path = tmp_path / "records" / "r.jsonl"
    path.write_text(
        "".join(
            json.dumps(
                {
                    "id": f"r/{i}",
                    "dataset": "flickr30k",
                    "split": "test",
                    "image": image,
                    "width": 40,
                    "height": 30,
                    "phrase": "a cat",
                    "boxes": [[0, 0, 10, 10]],
                }
            )
            + "\n"
            for i, image in enumerate(images)
        )  # fmt: skip
    )
    assert [r.image for r in load_records(path)] == [
        str(tmp_path / "real/a.jpg"),
        str(tmp_path / "real/b.jpg"),
        str(tmp_path / "real/a.jpg"),
        "/elsewhere/c.jpg",
        str(tmp_path / "real/b.jpg"),
        str(tmp_path / "records/d.jpg"),
    ]
    assert [r.image for r in load_records(path, resolve_images=False)] == images
