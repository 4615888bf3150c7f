"""Readers of the raw formats: exact records from hand-written fixtures, awkward cases, bad input."""

from __future__ import annotations

import json
import logging
import pickle
from collections import OrderedDict
from pathlib import Path

import pytest
from PIL import Image

from amc.cli import main
from amc.data import Problems
from amc.data.flickr30k import parse_sentence, read_flickr30k
from amc.data.prepare import prepare
from amc.data.refcoco import read_refcoco
from amc.data.vg import read_vg
from amc.io import DataError
from amc.records import Record, load_records
from tests.helpers import REFS, box_object, ref, write_flickr, write_refcoco, write_vg

# ------------------------------------------------------------------------------------ Flickr30k


@pytest.fixture
def flickr(tmp_path):
    root = tmp_path / "flickr30k"
    write_flickr(
        root,
        "100",
        [
            "[/EN#1/people A man] with [/EN#2/clothing a hat] looks at [/EN#3/scene the sky] and [/EN#1/people the man] smiles .",
            "",  # blank lines do not count as sentences
            "[/EN#4/people/bodyparts Two hands] hold [/EN#5/notvisual something] .",
        ],
        [
            box_object(["1", "4"], 11, 21, 50, 80),  # one object, two entities; 1-based coordinates
            box_object(["4"], 101, 1, 150, 60),
            box_object(["2"], 20, 5, 40, 20),
            "  <object><name>3</name><nobndbox>0</nobndbox><scene>1</scene></object>",
            "  <object><name>5</name><nobndbox>1</nobndbox><scene>0</scene></object>",
        ],
    )
    return root


MAN, HANDS_2, HAT = [10.0, 20.0, 49.0, 79.0], [100.0, 0.0, 149.0, 59.0], [19.0, 4.0, 39.0, 19.0]


def flickr_record(sentence, phrase_index, phrase, boxes, category, other_boxes, root):
    return Record(
        id=f"flickr30k/100/{sentence}/{phrase_index}",
        dataset="flickr30k",
        split="test",
        image=str(root / "flickr30k-images" / "100.jpg"),
        width=200,
        height=100,
        phrase=phrase,
        boxes=boxes,
        category=category,
        image_id="100",
        other_boxes=other_boxes,
    )


def test_flickr30k_exact_records(flickr):
    problems = Problems()
    records = read_flickr30k(flickr, "test", problems=problems)
    assert records == [
        flickr_record(0, 0, "A man", [MAN], "people", [HANDS_2, HAT], flickr),
        flickr_record(0, 1, "a hat", [HAT], "clothing", [MAN, HANDS_2], flickr),
        # phrase 2 ("the sky", scene) has no box and is left out
        flickr_record(0, 3, "the man", [MAN], "people", [HANDS_2, HAT], flickr),
        flickr_record(1, 0, "Two hands", [MAN, HANDS_2], "people/bodyparts", [HAT], flickr),
    ]
    assert not problems.skipped
    assert sum(problems.notes.values()) == 2  # the scene and the notvisual phrase


def test_parse_sentence_follows_the_official_parser():
    text, phrases = parse_sentence("[/EN#7/people A tall man] runs [/EN#8/other] .", "x:1")
    assert text == "A tall man runs ."
    assert [(p.entity_id, p.types, p.text, p.first_word) for p in phrases] == [
        ("7", ["people"], "A tall man", 0),
        ("8", ["other"], "", 4),
    ]
    with pytest.raises(DataError, match="x:1: phrase .*never closed"):
        parse_sentence("[/EN#7/people A man runs .", "x:1")
    with pytest.raises(DataError, match="malformed phrase marker"):
        parse_sentence("[EN7 A man] runs .", "x:1")


@pytest.fixture
def flickr_bad(tmp_path):
    root = tmp_path / "flickr30k"
    write_flickr(
        root,
        "200",
        [
            "[/EN#1/people A man] and [/EN#2/people a boy] and [/EN#3/people ] and [/EN#4/animals a dog]"
            " and [/EN#5/other a kite] ."
        ],
        [
            box_object(["1"], 11, 21, 50, 80),
            box_object(["2"], 60, 10, 40, 50),  # x2 <= x1: dropped
            box_object(["4"], 150, 10, 260, 50),  # beyond the 200 px width: kept as annotated
            box_object(["2"], 70, 10, 90, 50),  # entity 2 keeps this good box
            box_object(["5"], 10, "a", 30, 40),  # not a number: dropped, and entity 5 has no other box
        ],
    )
    return root


def test_flickr30k_bad_annotations_are_skipped_and_counted(flickr_bad, caplog):
    problems = Problems()
    with caplog.at_level(logging.WARNING):
        records = read_flickr30k(flickr_bad, "test", problems=problems)
    assert [r.id for r in records] == ["flickr30k/200/0/0", "flickr30k/200/0/1", "flickr30k/200/0/3"]
    # A malformed box among good ones: the entity keeps its other boxes, as the release evaluates it.
    assert records[1].phrase == "a boy" and records[1].boxes == [[69.0, 9.0, 89.0, 49.0]]
    # A box reaching outside the image is kept as annotated (not clipped).
    assert records[2].phrase == "a dog" and records[2].boxes == [[149.0, 9.0, 259.0, 49.0]]
    assert [69.0, 9.0, 89.0, 49.0] in records[0].other_boxes
    assert problems.skipped == {
        "degenerate box": 1,
        "non-numeric box": 1,
        "empty phrase": 1,
        "phrase of an entity whose boxes are all bad": 1,
    }
    assert "200.xml" in caplog.text and "degenerate box" in caplog.text


def test_flickr30k_on_error_stop_names_file_and_problem(flickr_bad):
    with pytest.raises(DataError, match=r"Annotations/200\.xml: object 2 \(entity 2\).*degenerate box"):
        read_flickr30k(flickr_bad, "test", problems=Problems("stop"))


def test_flickr30k_structural_problems_stop(tmp_path, flickr):
    (flickr / "Annotations" / "100.xml").write_text("<annotation><size><width>2</width></size>")
    with pytest.raises(DataError, match=r"100\.xml: malformed XML"):
        read_flickr30k(flickr, "test")
    (flickr / "Annotations" / "100.xml").unlink()
    with pytest.raises(DataError, match=r"100\.xml: file not found"):
        read_flickr30k(flickr, "test")
    with pytest.raises(DataError, match=r"val\.txt: split file not found"):
        read_flickr30k(flickr, "val")
    with pytest.raises(DataError, match="unknown split"):
        read_flickr30k(flickr, "testA")


# ------------------------------------------------------------------------------------ RefCOCO+


def test_refcoco_exact_records(tmp_path):
    root = tmp_path / "refcoco+"
    write_refcoco(root, REFS)
    images = root.parent / "coco" / "train2014"
    records = read_refcoco(root, "testA")
    common = dict(
        dataset="refcoco+",
        split="testA",
        image=str(images / "COCO_train2014_000000000001.jpg"),
        width=100,
        height=80,
        category="person",
        image_id="1",
    )
    assert records == [
        Record(
            id="refcoco+/1/100",
            phrase="man in red",
            boxes=[[10.0, 20.0, 40.0, 60.0]],
            other_boxes=[[50.5, 10.0, 70.5, 30.0]],
            **common,
        ),
        Record(
            id="refcoco+/1/101",
            phrase="guy on left of dog",
            boxes=[[10.0, 20.0, 40.0, 60.0]],
            other_boxes=[[50.5, 10.0, 70.5, 30.0]],
            **common,
        ),
    ]
    problems = Problems()
    everything = read_refcoco(root, None, problems=problems)
    assert [r.id for r in everything] == [
        "refcoco+/1/100",
        "refcoco+/1/101",
        "refcoco+/2/200",
        "refcoco+/4/401",
    ]
    assert problems.skipped == {"degenerate box": 1, "empty phrase": 1}
    with pytest.raises(
        DataError, match=r"refs\(unc\)\.p: ref 3: ann 12 bbox \[5, 5, 0, 10\].*degenerate box"
    ):
        read_refcoco(root, problems=Problems("stop"))


def test_refcoco_bad_pickles(tmp_path):
    root = tmp_path / "refcoco+"
    write_refcoco(root, REFS)
    data = (root / "refs(unc).p").read_bytes()
    (root / "refs(unc).p").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"refs\(unc\)\.p: (truncated pickle|not a readable pickle)"):
        read_refcoco(root)
    (root / "refs(unc).p").write_bytes(b"garbage, not a pickle")
    with pytest.raises(DataError, match="not a readable pickle"):
        read_refcoco(root)
    # Classes are refused: a refs file holds only plain data (and a pickle could run code).
    (root / "refs(unc).p").write_bytes(pickle.dumps([OrderedDict(ref_id=1)]))
    with pytest.raises(DataError, match="refuses to load collections.OrderedDict"):
        read_refcoco(root)
    write_refcoco(root, [{"ref_id": 1, "sentences": []}])
    with pytest.raises(DataError, match="ref 0: missing ann_id, image_id, split"):
        read_refcoco(root)
    write_refcoco(root, REFS, instances={"images": []})
    with pytest.raises(DataError, match="instances.json: not a COCO instances file"):
        read_refcoco(root)
    (root / "instances.json").write_text("{broken")
    with pytest.raises(DataError, match="instances.json: not valid JSON"):
        read_refcoco(root)


# ------------------------------------------------------------------------------------ Visual Genome


def vg_record(image_id, kind, n, phrase, box, category, root, width=100, height=80, folder="VG_100K"):
    return Record(
        id=f"vg/{image_id}/{kind}/{n}",
        dataset="vg",
        split="train",
        image=str(root / folder / f"{image_id}.jpg"),
        width=width,
        height=height,
        phrase=phrase,
        boxes=[box],
        category=category,
        image_id=str(image_id),
    )


def test_vg_exact_records(tmp_path):
    root = tmp_path / "vg"
    write_vg(root)
    problems = Problems()
    records = read_vg(root, problems=problems)
    assert records == [
        vg_record(1, "region", 0, "A red circle", [10.0, 5.0, 30.0, 35.0], None, root),
        vg_record(2, "region", 0, "sky", [0.0, 0.0, 60.0, 20.0], None, root, 60, 60, "VG_100K_2"),
        vg_record(1, "attribute", 0, "red circle", [10.0, 5.0, 30.0, 35.0], "circle", root),
        vg_record(1, "attribute", 1, "small circle", [10.0, 5.0, 30.0, 35.0], "circle", root),
        vg_record(1, "relation", 0, "circle LEFT OF square", [10.0, 5.0, 30.0, 35.0], "circle", root),
    ]
    assert problems.skipped == {"empty phrase": 1, "box outside image": 1}


def test_vg_exclusion_by_coco_and_flickr_id(tmp_path):
    root = tmp_path / "vg"
    write_vg(root)
    assert {r.image_id for r in read_vg(root, exclude_coco_ids=["501"])} == {"2"}
    assert {r.image_id for r in read_vg(root, exclude_flickr_ids=["900"])} == {"1"}
    assert {r.image_id for r in read_vg(root, kinds=["region"], exclude_coco_ids=["999"])} == {"1", "2"}


def test_vg_structural_problems_stop(tmp_path):
    root = tmp_path / "vg"
    write_vg(root)
    (root / "attributes.json").write_text('[{"image_id": 1, "attributes": [')
    with pytest.raises(DataError, match=r"attributes\.json: not valid JSON"):
        read_vg(root)
    (root / "attributes.json").write_text('{"image_id": 1}')
    with pytest.raises(DataError, match=r"attributes\.json: expected a JSON list"):
        read_vg(root)
    (root / "relationships.json").unlink()
    with pytest.raises(DataError, match=r"relationships\.json: file not found"):
        read_vg(root, kinds=["relation"])


# ------------------------------------------------------------------------------------ amc prepare


def touch_image(path: Path, size=(200, 100)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size).save(path)


def test_prepare_writes_relative_paths_and_checks_images(tmp_path, flickr, caplog):
    write_flickr(flickr, "101", ["[/EN#9/people A woman] ."], [box_object(["9"], 1, 1, 10, 10)])
    touch_image(flickr / "flickr30k-images" / "100.jpg")  # 101.jpg is missing
    out = tmp_path / "records" / "flickr30k-test.jsonl"
    with caplog.at_level(logging.INFO):
        code = main(
            [
                "prepare",
                "flickr30k",
                "--root",
                str(flickr),
                "--images",
                str(flickr / "flickr30k-images"),
                "--split",
                "test",
                "--out",
                str(out),
            ]
        )
    assert code == 0
    raw = [json.loads(line) for line in out.read_text().splitlines()]
    assert raw[0]["image"] == "../flickr30k/flickr30k-images/100.jpg"
    records = load_records(out)
    assert len(records) == 4 and Path(records[0].image).is_file()
    assert "image missing: 1" in caplog.text
    # Without --images nothing is checked: the record of 101 is written too.
    records, problems = prepare("flickr30k", flickr, out, split="test")
    assert len(records) == 5 and not problems.skipped


def test_prepare_on_error_stop_fails_with_exit_code_2(tmp_path, flickr_bad, caplog):
    out = tmp_path / "out.jsonl"
    assert (
        main(
            [
                "prepare",
                "flickr30k",
                "--root",
                str(flickr_bad),
                "--split",
                "test",
                "--out",
                str(out),
                "--on-error",
                "stop",
            ]
        )
        == 2
    )
    assert "degenerate box" in caplog.text and not out.exists()
    assert (
        main(["prepare", "flickr30k", "--root", str(flickr_bad), "--split", "test", "--out", str(out)]) == 0
    )
    assert len(load_records(out)) == 3


def test_prepare_vg_excludes_images_of_evaluation_records(tmp_path):
    vg_root, ref_root = tmp_path / "vg", tmp_path / "refcoco+"
    write_vg(vg_root)
    write_refcoco(ref_root, [ref(1, 10, 501, "testA", 1, "man")], instances={
        "images": [{"id": 501, "file_name": "COCO_train2014_000000000501.jpg", "width": 100, "height": 80}],
        "annotations": [{"id": 10, "image_id": 501, "bbox": [1, 1, 10, 10], "category_id": 1, "area": 100, "iscrowd": 0}],
        "categories": [{"id": 1, "name": "person"}],
    })  # fmt: skip
    eval_out = tmp_path / "refcoco-testA.jsonl"
    prepare("refcoco+", ref_root, eval_out, split="testA")
    records, problems = prepare("vg", vg_root, tmp_path / "vg.jsonl", exclude_records=[eval_out])
    assert {r.image_id for r in records} == {"2"}
    assert problems.notes == {"image shared with an evaluation set (excluded)": 1}
    with pytest.raises(DataError, match="apply to vg only"):
        prepare("refcoco+", ref_root, tmp_path / "x.jsonl", exclude_records=[eval_out])
    with pytest.raises(DataError, match="no records left"):
        prepare("refcoco+", ref_root, tmp_path / "x.jsonl", split="val")
