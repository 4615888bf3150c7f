"""``amc synth``: deterministic, in the real raw formats, readable by the readers, not trivial."""

from __future__ import annotations

import hashlib
import json
import pickle
import random
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from amc.cli import main
from amc.data import Problems
from amc.data.flickr30k import parse_sentence, read_flickr30k
from amc.data.prepare import prepare
from amc.data.refcoco import read_refcoco
from amc.data.vg import read_vg
from amc.data.vg_released import read_vg_released
from amc.io import AmcError
from amc.synth import COLOURS, REFCOCO_GROUP_A, REFCOCO_GROUP_B, SCALES, SHAPES, generate, vocabulary_words


def pre_caption(text: str) -> str:
    """ALBEF's caption clean-up (lowercase, punctuation out), as the tokenizer applies it."""
    text = re.sub(r"([,.'!?\"()*#:;~])", "", text.lower()).replace("-", " ").replace("/", " ")
    return re.sub(r"\s{2,}", " ", text).strip()


def digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "data"
    assert main(["synth", "--out", str(out), "--seed", "0", "--scale", "ci"]) == 0
    return out


@pytest.fixture(scope="module")
def eval_records(synth):
    return {
        **{f"flickr30k-{s}": read_flickr30k(synth / "flickr30k", s) for s in ("val", "test")},
        **{f"refcoco+-{s}": read_refcoco(synth / "refcoco+", s) for s in ("val", "testA", "testB")},
    }


def test_layout_and_info(synth):
    for path in [
        "vg/image_data.json",
        "vg/region_descriptions.json",
        "vg/attributes.json",
        "vg/relationships.json",
        "vg/VG_100K/1.jpg",
        "amc/vg_descriptions.json",
        "amc/vg_attributes_spatial.json",
        "amc/vg_attributes.json",
        "flickr30k/train.txt",
        "flickr30k/val.txt",
        "flickr30k/test.txt",
        "refcoco+/refs(unc).p",
        "refcoco+/instances.json",
        "captions/pretrain.json",
        "vocab/vocab.txt",
    ]:
        assert (synth / path).is_file(), path
    flickr_id = (synth / "flickr30k/test.txt").read_text().split()[0]
    for path in [
        f"flickr30k/Sentences/{flickr_id}.txt",
        f"flickr30k/Annotations/{flickr_id}.xml",
        f"flickr30k/flickr30k-images/{flickr_id}.jpg",
    ]:
        assert (synth / path).is_file(), path
    coco = json.loads((synth / "refcoco+/instances.json").read_text())
    assert re.fullmatch(r"COCO_train2014_\d{12}\.jpg", coco["images"][0]["file_name"])
    assert (synth / "coco/train2014" / coco["images"][0]["file_name"]).is_file()
    info = json.loads((synth / "SYNTH_INFO.json").read_text())
    assert info["seed"] == 0 and info["scale"] == "ci"
    assert info["parameters"]["vg_images"] == SCALES["ci"].vg_images
    assert info["counts"]["images"] == len(list(synth.rglob("*.jpg")))
    assert not list(synth.parent.glob(".*partial"))  # the build folder was moved into place


def test_same_seed_gives_identical_files_other_seed_does_not(synth, tmp_path):
    again = tmp_path / "again"
    generate(again, seed=0, scale="ci")
    reference = digest(synth)
    assert digest(again) == reference
    other = tmp_path / "other"
    generate(other, seed=1, scale="ci")
    changed = {k for k, v in digest(other).items() if reference.get(k) != v}
    assert "captions/pretrain.json" in changed and "vg/VG_100K/1.jpg" in changed


def test_output_does_not_depend_on_worker_processes(tmp_path):
    scale = replace(SCALES["ci"], pretrain_images=220)  # enough images to use the process pool
    generate(tmp_path / "one", seed=3, scale=scale, workers=1)
    generate(tmp_path / "two", seed=3, scale=scale, workers=2)
    assert digest(tmp_path / "one") == digest(tmp_path / "two")


def test_refuses_to_replace_a_folder_it_did_not_write(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("precious")
    with pytest.raises(AmcError, match="refusing to overwrite"):
        generate(tmp_path / "mine", seed=0, scale="ci")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "precious"


def all_texts(root: Path) -> list[str]:
    texts = [
        r["phrase"]
        for image in json.loads((root / "vg/region_descriptions.json").read_text())
        for r in image["regions"]
    ]
    for image in json.loads((root / "vg/attributes.json").read_text()):
        texts += [f"{a} {o['names'][0]}" for o in image["attributes"] for a in o["attributes"]]
    for image in json.loads((root / "vg/relationships.json").read_text()):
        texts += [
            f"{r['subject']['name']} {r['predicate']} {r['object']['name']}" for r in image["relationships"]
        ]
    for path in (root / "flickr30k/Sentences").glob("*.txt"):
        texts += [parse_sentence(line, str(path))[0] for line in path.read_text().splitlines()]
    for ref in pickle.loads((root / "refcoco+/refs(unc).p").read_bytes()):
        texts += [s["raw"] for s in ref["sentences"]] + [s["sent"] for s in ref["sentences"]]
    texts += [item["caption"] for item in json.loads((root / "captions/pretrain.json").read_text())]
    return texts


def test_vocab_has_512_lines_and_covers_every_emitted_word(synth):
    lines = (synth / "vocab/vocab.txt").read_text().splitlines()
    assert len(lines) == 512 and len(set(lines)) == 512
    assert lines[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert lines[5 : 5 + len(vocabulary_words())] == vocabulary_words() and lines[-1].startswith("[unused")
    emitted = {word for text in all_texts(synth) for word in pre_caption(text).split()}
    assert emitted <= set(lines), emitted - set(lines)
    assert set(SHAPES) | set(COLOURS) | {"left", "right", "above", "below"} <= emitted


def test_images_are_non_square_and_match_annotations(synth):
    image_data = json.loads((synth / "vg/image_data.json").read_text())
    sizes = set()
    for entry in image_data:
        with Image.open(synth / "vg/VG_100K" / f"{entry['image_id']}.jpg") as image:
            assert image.size == (entry["width"], entry["height"])
            sizes.add(image.size)
    assert all(w != h and 96 <= w <= 160 and 96 <= h <= 160 for w, h in sizes)
    # The pixel at an object's box centre has the object's colour (all shapes cover their centre).
    for image in json.loads((synth / "vg/attributes.json").read_text())[:10]:
        pixels = np.asarray(Image.open(synth / "vg/VG_100K" / f"{image['image_id']}.jpg"), dtype=float)
        for obj in image["attributes"]:
            cx, cy = obj["x"] + obj["w"] // 2, obj["y"] + obj["h"] // 2
            patch = pixels[cy - 1 : cy + 2, cx - 1 : cx + 2].reshape(-1, 3).mean(0)
            assert np.abs(patch - COLOURS[obj["attributes"][0]]).max() < 45, (image["image_id"], obj)


def test_splits_are_disjoint_and_vg_ids_collide_with_eval_images(synth):
    flickr = {s: set((synth / f"flickr30k/{s}.txt").read_text().split()) for s in ("train", "val", "test")}
    assert not (
        flickr["train"] & flickr["val"] or flickr["train"] & flickr["test"] or flickr["val"] & flickr["test"]
    )
    refs = pickle.loads((synth / "refcoco+/refs(unc).p").read_bytes())
    by_split: dict[str, set] = {}
    for ref in refs:
        by_split.setdefault(ref["split"], set()).add(ref["image_id"])
    assert set(by_split) == {"train", "val", "testA", "testB"}
    splits = list(by_split.values())
    assert all(not (a & b) for i, a in enumerate(splits) for b in splits[i + 1 :])
    image_data = json.loads((synth / "vg/image_data.json").read_text())
    eval_coco = by_split["val"] | by_split["testA"] | by_split["testB"]
    assert any(e["coco_id"] in eval_coco for e in image_data)
    assert any(str(e["flickr_id"]) in flickr["val"] | flickr["test"] for e in image_data)


def test_refcoco_testA_testB_by_category_and_targets_need_more_than_the_shape(synth):
    coco = json.loads((synth / "refcoco+/instances.json").read_text())
    names = {c["id"]: c["name"] for c in coco["categories"]}
    anns = {a["id"]: a for a in coco["annotations"]}
    for ref in pickle.loads((synth / "refcoco+/refs(unc).p").read_bytes()):
        shape = names[ref["category_id"]]
        if ref["split"] == "testA":
            assert shape in REFCOCO_GROUP_A
        if ref["split"] == "testB":
            assert shape in REFCOCO_GROUP_B
        same = [
            a
            for a in anns.values()
            if a["image_id"] == ref["image_id"] and a["category_id"] == ref["category_id"]
        ]
        assert len(same) >= 2 and anns[ref["ann_id"]] in same
        for sentence in ref["sentences"]:
            words = sentence["sent"].split()
            assert words not in ([shape], ["the", shape])  # an attribute or a relation is needed
            assert not {"leftmost", "rightmost", "top", "bottom"} & set(words)


def test_readers_read_the_synthetic_sets(synth, eval_records, tmp_path):
    assert all(eval_records.values())
    vg = read_vg(synth / "vg")
    kinds = {r.id.split("/")[2] for r in vg}
    assert kinds == {"region", "attribute", "relation"}
    assert any(r.phrase.startswith(tuple(COLOURS)) and r.id.split("/")[2] == "attribute" for r in vg)
    for records in eval_records.values():
        for record in random.Random(0).sample(records, 5):
            with Image.open(record.image) as image:
                assert image.size == (record.width, record.height)
    # Excluding the evaluation images from VG drops the colliding images.
    files = []
    for name in eval_records:
        dataset, split = name.split("-")
        files.append(tmp_path / f"{name}.jsonl")
        prepare(dataset, synth / dataset, files[-1], split=split)
    kept, problems = prepare("vg", synth / "vg", tmp_path / "vg.jsonl", exclude_records=files)
    info = json.loads((synth / "SYNTH_INFO.json").read_text())["counts"]
    excluded = sum(problems.notes.values())
    assert excluded == info["vg_images_with_eval_coco_id"] + info["vg_images_with_eval_flickr_id"] > 0
    assert len({r.image_id for r in kept}) == info["vg_images"] - excluded
    # The released format: the same images are left out, mapped through image_data.json.
    released, problems = prepare(
        "vg", synth / "amc", tmp_path / "vg-released.jsonl", images=synth / "vg", vg_format="released",
        exclude_records=files, image_data=synth / "vg/image_data.json",
    )  # fmt: skip
    assert {r.image_id for r in released} == {r.image_id for r in kept} and not problems.skipped


def test_released_vg_files_mirror_the_raw_phrases(synth):
    """The synthetic released files: every raw phrase once, some entries with several captions or boxes."""
    problems = Problems()
    records = read_vg_released(synth / "amc", synth / "vg", problems=problems)
    info = json.loads((synth / "SYNTH_INFO.json").read_text())["counts"]
    files = ("vg_descriptions", "vg_attributes_spatial", "vg_attributes")
    assert len(records) == sum(info[f"released_{name}"] for name in files)
    assert not problems.skipped and not problems.notes  # nothing skipped, no box empty
    raw = read_vg(synth / "vg")
    for kind, name in (
        ("region", "vg_descriptions"),
        ("attribute", "vg_attributes"),
        ("relation", "vg_attributes_spatial"),
    ):
        released_texts = sorted(
            t for r in records if r.id.split("/")[1] == name for t in (r.captions or [r.phrase])
        )
        if kind == "region":
            assert released_texts == sorted(r.phrase for r in raw if r.id.split("/")[2] == kind)
        else:  # several objects sharing a phrase are one entry with several boxes
            assert set(released_texts) == {r.phrase for r in raw if r.id.split("/")[2] == kind}
    assert any(len(r.captions) > 1 for r in records) and any(len(r.boxes) > 1 for r in records)


def inside(point, box) -> bool:
    return box[0] < point[0] < box[2] and box[1] < point[1] < box[3]


def test_text_ignoring_baselines_score_low(eval_records):
    """Pointing at the image centre, or at the centre of a random object, must score far below grounding."""
    rng = random.Random(0)
    pooled_hits = pooled_cases = 0
    for name, records in eval_records.items():
        centre = sum(any(inside((r.width / 2, r.height / 2), b) for b in r.boxes) for r in records) / len(
            records
        )
        assert centre < 0.2, (name, centre)
        for r in records:
            box = rng.choice(r.boxes + r.other_boxes)
            pooled_hits += any(inside(((box[0] + box[2]) / 2, (box[1] + box[3]) / 2), b) for b in r.boxes)
            pooled_cases += 1
    assert pooled_hits / pooled_cases < 0.45
