"""Every reader of a file a person supplies ends in records, or in an AmcError naming the file
(docs/architecture.md, Guarantees): valid inputs are mutated at random places into any JSON value
(wrong types, NaN, nesting, deletions), and nothing else may come out, no traceback.
"""

from __future__ import annotations

import copy
import json
import pickle
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from amc.data import Problems
from amc.data.datasets import load_captions
from amc.data.flickr30k import read_flickr30k
from amc.data.refcoco import read_refcoco
from amc.data.vg import read_vg
from amc.data.vg_released import FILES, read_vg_released
from amc.download import Artifact
from amc.download.manifest import _parse_artifact
from amc.download.verify import _expected
from amc.evaluate import _load_proposals
from amc.io import AmcError
from amc.models.config import ModelConfig
from amc.records import Record, record_from_dict
from tests.helpers import (
    ATTRIBUTES,
    DESCRIPTIONS,
    REFS,
    SPATIAL,
    box_object,
    write_flickr,
    write_images,
    write_refcoco,
    write_vg,
)

# derandomize: the same examples on every run, so the suite is reproducible (False explores new ones)
SETTINGS = settings(
    max_examples=150, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck)
)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(10**6), 10**6)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=5)
)
JSON = st.recursive(
    SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=6,
)  # fmt: skip
DELETE = object()


def paths(node, prefix=()):
    """Every place in a JSON document (the root included)."""
    yield prefix
    if isinstance(node, dict):
        for key, value in node.items():
            yield from paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from paths(value, (*prefix, index))


@st.composite
def mutated(draw, document, keep_root=True):
    """``document`` with one to three places replaced by any JSON value, or deleted."""
    document = copy.deepcopy(document)
    for _ in range(draw(st.integers(1, 3))):
        places = [p for p in paths(document) if p or not keep_root]
        if not places:
            break
        place = draw(st.sampled_from(places))
        value = draw(JSON | st.just(DELETE))
        if not place:
            document = value if value is not DELETE else None
            continue
        parent = document
        for part in place[:-1]:
            parent = parent[part]
        if value is DELETE:
            del parent[place[-1]]
        else:
            parent[place[-1]] = value
    return document


def texts_in(node) -> list[str]:
    """Every string of a JSON document, keys included."""
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        return [*node, *(t for value in node.values() for t in texts_in(value))]
    if isinstance(node, list):
        return [t for value in node for t in texts_in(value)]
    return []


def assert_records_or_named_error(read, where: str, source=None) -> None:
    """``read()`` gives sound records or an AmcError naming ``where``; with ``source`` (the document
    the files were written from), every word of a phrase was written in it as text: a null or a
    number never becomes the phrase "None" or "3"."""
    try:
        records = read()
    except AmcError as error:
        assert where in str(error), str(error)
        return
    texts = texts_in(source) if source is not None else None
    for record in records:
        assert isinstance(record, Record)
        record_from_dict(record.to_dict(), "reader output")  # what a reader makes is a sound record
        if texts is not None:
            for word in record.phrase.split():
                assert any(word in text for text in texts), (record.phrase, word)


def canonical_refcoco() -> dict:
    root = Path(tempfile.mkdtemp())

    write_refcoco(root, REFS)
    return {"instances": json.loads((root / "instances.json").read_text()), "refs": copy.deepcopy(REFS)}


@SETTINGS
@given(document=mutated(canonical_refcoco()))
def test_refcoco_reader(document):
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder) / "refcoco+"
        root.mkdir()
        (root / "instances.json").write_text(json.dumps(document.get("instances")))
        (root / "refs(unc).p").write_bytes(pickle.dumps(document.get("refs"), protocol=2))
        assert_records_or_named_error(
            lambda: read_refcoco(root, problems=Problems()), str(root), document.get("refs")
        )


def canonical_vg() -> dict:
    root = Path(tempfile.mkdtemp())
    write_vg(root)
    return {name: json.loads((root / f"{name}.json").read_text()) for name in
            ("image_data", "region_descriptions", "attributes", "relationships")}  # fmt: skip


@SETTINGS
@given(document=mutated(canonical_vg()))
def test_visual_genome_reader(document):
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        for name, data in document.items():
            (root / f"{name}.json").write_text(json.dumps(data))
        assert_records_or_named_error(lambda: read_vg(root, problems=Problems()), str(root), document)


# (file, where in it, the part set to null): each is a phrase part of a VG annotation.
VG_PHRASE_PARTS = [
    ("region_descriptions", (0, "regions", 0, "phrase")),
    ("attributes", (0, "attributes", 0, "attributes", 0)),
    ("attributes", (0, "attributes", 0, "names", 0)),
    ("relationships", (0, "relationships", 0, "predicate")),
    ("relationships", (0, "relationships", 0, "subject", "name")),
]


@pytest.mark.parametrize(("name", "place"), VG_PHRASE_PARTS)
@pytest.mark.parametrize("value", [None, 3, True])
def test_a_null_phrase_part_is_an_empty_phrase_not_text(tmp_path, name, place, value):
    write_vg(tmp_path)
    expected = len(read_vg(tmp_path, problems=Problems()))
    data = json.loads((tmp_path / f"{name}.json").read_text())
    node = data
    for part in place[:-1]:
        node = node[part]
    node[place[-1]] = value
    (tmp_path / f"{name}.json").write_text(json.dumps(data))
    problems = Problems()
    records = read_vg(tmp_path, problems=problems)
    assert not [r.phrase for r in records if str(value) in r.phrase.split()]
    lost = expected - len(records)
    assert lost >= 1 and problems.skipped["empty phrase"] == 1 + lost  # 1: the file's blank region


def test_a_null_refcoco_sentence_is_an_empty_phrase_not_text(tmp_path):

    write_refcoco(tmp_path / "as-is", REFS)
    before = Problems()
    expected = len(read_refcoco(tmp_path / "as-is", problems=before))
    refs = copy.deepcopy(REFS)
    refs[0]["sentences"][0]["sent"] = None
    write_refcoco(tmp_path / "null", refs)
    problems = Problems()
    records = read_refcoco(tmp_path / "null", problems=problems)
    assert "None" not in {r.phrase for r in records} and len(records) == expected - 1
    assert problems.skipped["empty phrase"] == before.skipped["empty phrase"] + 1


@pytest.fixture(scope="module")
def vg_images(tmp_path_factory) -> Path:
    images = tmp_path_factory.mktemp("vg-images")
    write_images(images)
    return images


@SETTINGS
@given(document=mutated({"files": [DESCRIPTIONS, SPATIAL, ATTRIBUTES]}))
def test_released_visual_genome_reader(vg_images, document):
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        files = document.get("files")
        for number, name in enumerate(FILES):
            data = files[number] if isinstance(files, list) and number < len(files) else files
            (root / name).write_text(json.dumps(data))
        assert_records_or_named_error(
            lambda: read_vg_released(root, vg_images, problems=Problems()), str(root), files
        )


FLICKR = {
    "size": [200, 100],
    "sentences": ["[/EN#1/people A man] with [/EN#2/clothing a hat] .", "[/EN#4/people Two hands] ."],
    "objects": [[["1", "4"], [11, 21, 50, 80]], [["2"], [20, 5, 40, 20]], [["3"], None]],
}


def xml_text(value) -> str:
    from xml.sax.saxutils import escape

    return escape(str(value))


@SETTINGS
@given(document=mutated(FLICKR), sentence=st.text(max_size=30))
def test_flickr30k_reader(document, sentence):
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        objects = []
        try:
            for names, box in document["objects"]:
                names = [xml_text(n) for n in names] if isinstance(names, list) else [xml_text(names)]
                if isinstance(box, list) and len(box) == 4:
                    objects.append(box_object(names, *(xml_text(v) for v in box)))
                else:
                    objects.append(
                        f"  <object><name>{names[0] if names else ''}</name><nobndbox>1</nobndbox></object>"
                    )
            sentences = [str(s) for s in document["sentences"]] + [sentence.replace("\r", " ")]
            width, height = (xml_text(v) for v in document["size"])
        except (KeyError, TypeError, ValueError):
            return  # the mutation broke the test's own template, not a file
        write_flickr(root, "100", [s.replace("\n", " ") for s in sentences], objects)
        xml = (root / "Annotations" / "100.xml").read_text()
        (root / "Annotations" / "100.xml").write_text(
            xml.replace("<width>200</width>", f"<width>{width}</width>").replace(
                "<height>100</height>", f"<height>{height}</height>"
            )
        )
        assert_records_or_named_error(
            lambda: read_flickr30k(root, "test", problems=Problems()), str(root), sentences
        )


@SETTINGS
@given(document=mutated([{"image": "a.jpg", "caption": "a cat"}, {"image": "b.jpg", "caption": ["x", "y"]}]))
def test_caption_reader(document):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "captions.json"
        path.write_text(json.dumps(document))
        try:
            load_captions(path)
        except AmcError as error:
            assert str(path) in str(error)


@SETTINGS
@given(document=mutated({"1": [[1, 2, 3, 4, 0.9]], "2": [[0, 0, 5, 5]]}, keep_root=False))
def test_proposals_reader(document):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "proposals.json"
        path.write_text(json.dumps(document))
        try:
            proposals = _load_proposals(str(path))
        except AmcError as error:
            assert str(path) in str(error)
            return
        assert all(
            len(b) == 4 and all(isinstance(v, float) for v in b) for bs in proposals.values() for b in bs
        )


ARTIFACT = {
    "name": "vg_images",
    "urls": ["https://example.org/images.zip"],
    "filename": "vg/images.zip",
    "size": 10,
    "sha256": None,
    "unpack": "zip",
    "unpack_to": "vg",
    "produces": ["vg/VG_100K"],
    "description": "images",
    "license": "CC BY 4.0",
}


@SETTINGS
@given(document=mutated(ARTIFACT, keep_root=False))
def test_manifest_entries(document):
    try:
        artifact = _parse_artifact(document, "manifest.yaml: artifact #1")
    except AmcError as error:
        assert "manifest.yaml: artifact #1" in str(error)
        return
    assert isinstance(artifact, Artifact)


@SETTINGS
@given(
    document=mutated({"version": 1, "artifacts": {"blob": {"filename": "x.bin", "size": 3, "sha256": "ab"}}})
)
def test_lock_file(document):
    artifact = Artifact("blob", (), "x.bin", None, None, "none", None, ("x.bin",), "d", "l", manual="by hand")
    with tempfile.TemporaryDirectory() as folder:
        dest = Path(folder)
        (dest / "checksums.lock.json").write_text(json.dumps(document))
        try:
            expected = _expected(artifact, dest)
        except AmcError as error:
            assert "checksums.lock.json" in str(error)
            return
        assert expected.sha256 is None or isinstance(expected.sha256, str)
        assert expected.size is None or isinstance(expected.size, int)


TINY = {
    "image_res": 32,
    "embed_dim": 16,
    "vision": {"patch_size": 16, "width": 32, "depth": 1, "heads": 2},
    "text": {"vocab_size": 50, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
             "intermediate_size": 64, "fusion_layer": 1, "encoder_width": 32},
}  # fmt: skip


@SETTINGS
@given(document=mutated(TINY))
def test_model_config(document):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.json"
        path.write_text(json.dumps(document))
        try:
            ModelConfig.from_file(path)
        except AmcError as error:
            assert str(path) in str(error)
