"""Checkpoint conversion: every key mapped explicitly, loud errors, round trips.

Full-size key maps are checked on the meta device (names and shapes only, no memory);
real loads use the tiny model.
"""

from __future__ import annotations

import functools
import re

import pytest
import torch
from model_fixtures import (
    BASE_YAML,
    GOLDEN,
    meta_state_dict,
    read_key_list,
    tiny_batch,
    tiny_config,
    tiny_model,
)

from amc.gradcam import gradcam_eval
from amc.io import AmcError
from amc.models import ALBEF, ModelConfig
from amc.models.checkpoint import (
    FORMAT,
    convert_to_model_keys,
    export_albef,
    load_converted,
    load_model,
    load_state_dict_file,
    read_checkpoint,
    save_checkpoint,
)


@functools.cache
def _meta_model(image_res: int = 256) -> ALBEF:
    """Full-size ALBEF on the meta device (shared: conversion only reads names and shapes)."""
    with torch.device("meta"):
        return ALBEF(ModelConfig.from_file(BASE_YAML).replace(image_res=image_res))


def _refcoco_rows():
    """refcoco.pth's naming: the ALBEF grounding/eval class (image_res 384), from albef_eval_model_keys.txt."""
    rows = []
    for line in (GOLDEN / "albef_eval_model_keys.txt").read_text().splitlines():
        name, shape = line.split("\t")[:2]
        rows.append((name, tuple(int(x) for x in shape.split(",")) if shape else (), None))
    return rows


# ------------------------------------------------------------ full-size maps


def test_albef_pth_maps_identically_at_full_size():
    state = meta_state_dict(read_key_list("albef_checkpoint_keys_dtypes.txt"))
    model = _meta_model()
    for purpose in ("train", "eval"):
        report = convert_to_model_keys(state, model, purpose)
        assert set(report.state_dict) == set(model.state_dict())
        assert not report.renamed and not report.dropped and not report.missing_allowed and not report.resized


def test_albef_pth_at_384_resizes_both_pos_embeds():
    state = meta_state_dict(read_key_list("albef_checkpoint_keys_dtypes.txt"))
    report = convert_to_model_keys(state, _meta_model(384), "eval")
    assert report.resized == {
        "visual_encoder.pos_embed": ((1, 257, 768), (1, 577, 768)),
        "visual_encoder_m.pos_embed": ((1, 257, 768), (1, 577, 768)),
    }


def test_amc_checkpoint_queue_pointers():
    state = meta_state_dict(read_key_list("amc_checkpoint_keys.txt"))
    report = convert_to_model_keys(state, _meta_model(), "train")
    assert report.renamed == {"queue_ptr_img": "queue_ptr"}
    assert list(report.dropped) == ["queue_ptr_txt"]
    assert set(report.state_dict) == set(_meta_model().state_dict())


def test_refcoco_naming_loads_for_eval_and_needs_explicit_mlm_allowance_for_train():
    rows = _refcoco_rows()
    assert len(rows) == 831
    state = meta_state_dict(rows)
    model = _meta_model(384)
    report = convert_to_model_keys(state, model, "eval")
    assert list(report.dropped) == ["idx_queue"]
    assert len(report.renamed) == sum(
        1 for name, _, _ in rows if ".bert" not in name and "text_encoder" in name
    )
    assert all(re.search(r"text_encoder(_m)?\.bert\.", new) for new in report.renamed.values())
    # Only the MLM heads' own weights are left at init; their tied decoder weights come from the embeddings.
    assert sorted(report.missing_allowed) == sorted(
        f"text_encoder{m}.cls.predictions.{k}"
        for m in ("", "_m")
        for k in (
            "bias",
            "transform.dense.weight",
            "transform.dense.bias",
            "transform.LayerNorm.weight",
            "transform.LayerNorm.bias",
            "decoder.bias",
        )
    )
    with pytest.raises(AmcError, match=r"allow_missing=\('mlm_head',\)") as error:
        convert_to_model_keys(state, model, "train")
    assert "text_encoder.cls.predictions.transform.dense.weight" in str(error.value)
    assert convert_to_model_keys(state, model, "train", allow_missing=("mlm_head",)).missing_allowed
    # At 256 px the 24x24 grid is resized down to 16x16.
    assert convert_to_model_keys(state, _meta_model(256), "eval").resized["visual_encoder.pos_embed"] == (
        (1, 577, 768),
        (1, 257, 768),
    )


def test_eval_allows_missing_momentum_and_queues_train_does_not():
    rows = [
        r
        for r in read_key_list("albef_checkpoint_keys_dtypes.txt")
        if "_m." not in r[0] and "queue" not in r[0]
    ]
    state = meta_state_dict(rows)
    report = convert_to_model_keys(state, _meta_model(), "eval")
    assert {"image_queue", "text_queue", "queue_ptr", "visual_encoder_m.pos_embed"} <= set(
        report.missing_allowed
    )
    with pytest.raises(AmcError, match="model keys missing") as error:
        convert_to_model_keys(state, _meta_model(), "train")
    assert "visual_encoder_m.pos_embed" in str(error.value) and "queue_ptr" in str(error.value)


def test_unknown_key_and_wrong_shape_are_errors_naming_them():
    state = meta_state_dict(read_key_list("albef_checkpoint_keys_dtypes.txt"))
    state["text_encoder.bert.pooler.dense.weight"] = torch.empty(768, 768, device="meta")
    state["itm_head.weight"] = torch.empty(3, 768, device="meta")
    with pytest.raises(AmcError) as error:
        convert_to_model_keys(state, _meta_model(), "eval", source="ALBEF.pth")
    message = str(error.value)
    assert message.startswith("ALBEF.pth: cannot load")
    assert "text_encoder.bert.pooler.dense.weight" in message and "unmapped" in message
    assert "itm_head.weight: checkpoint shape (3, 768) != model shape (2, 768)" in message


# ----------------------------------------------------------------- real loads


def _tiny_state_equal(a: ALBEF, b: ALBEF) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def test_project_checkpoint_round_trip(tmp_path):
    model = tiny_model()
    model.dequeue_and_enqueue(torch.ones(64, 64), torch.ones(64, 64))
    path = tmp_path / "checkpoint_last.pt"
    save_checkpoint(path, model, epoch=3, optimizer={"lr": 0.1})
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint_last.pt"]  # atomic: no temp left
    checkpoint = read_checkpoint(path)
    assert checkpoint.layout == "amc-bench" and checkpoint.extra == {"epoch": 3, "optimizer": {"lr": 0.1}}
    assert torch.load(path)["format"] == FORMAT
    loaded = load_model(path, purpose="train")  # its own model_config
    _tiny_state_equal(model, loaded)
    assert int(loaded.queue_ptr) == 64
    assert (
        loaded.text_encoder.cls.predictions.decoder.weight
        is loaded.text_encoder.bert.embeddings.word_embeddings.weight
    )
    # Another image_res is fine (pos_embed resized); another architecture is an error.
    assert load_model(path, tiny_config(image_res=128)).image_grid == (16, 16)
    other = tiny_config()
    other.text.intermediate_size = 128
    with pytest.raises(AmcError, match="text.intermediate_size: checkpoint 256 vs given 128"):
        load_model(path, other)
    with pytest.raises(ValueError, match="reserved"):
        save_checkpoint(path, model, model={})


def test_export_albef_round_trip(tmp_path):
    model = tiny_model()
    exported = export_albef(model)
    assert list(exported) == ["model"] and list(exported["model"]) == list(model.state_dict())
    sd = exported["model"]
    assert (
        sd["text_encoder.cls.predictions.decoder.weight"]
        is sd["text_encoder.bert.embeddings.word_embeddings.weight"]
    )
    path = tmp_path / "ALBEF_tiny.pth"
    torch.save(exported, path)
    assert read_checkpoint(path).layout == "albef"
    with pytest.raises(AmcError, match="carries no model config"):
        load_model(path)
    _tiny_state_equal(model, load_model(path, tiny_config(), purpose="train"))


def test_refcoco_style_tiny_checkpoint_gives_the_same_gradcam(tmp_path):
    model = tiny_model()
    refcoco = {
        key.replace("bert.", ""): value
        for key, value in export_albef(model)["model"].items()
        if ".cls." not in key
    }
    refcoco["idx_queue"] = torch.zeros(1, 1024, dtype=torch.long)
    path = tmp_path / "refcoco.pth"
    torch.save(refcoco, path)
    assert read_checkpoint(path).layout == "bare"
    loaded = load_model(path, tiny_config(), purpose="eval").eval()
    images, ids, mask = tiny_batch(model)
    with torch.no_grad():
        embeds = model.encode_image(images)
    torch.testing.assert_close(
        gradcam_eval(loaded, loaded.encode_image(images).detach(), ids, mask),
        gradcam_eval(model, embeds, ids, mask),
    )
    with pytest.raises(AmcError, match="mlm_head"):
        load_model(path, tiny_config(), purpose="train")


def test_missing_momentum_copies_are_copied_from_online_for_train(tmp_path):
    model = tiny_model()
    state = {k: v for k, v in export_albef(model)["model"].items() if not re.match(r"\w+_m\.", k)}
    report = convert_to_model_keys(state, model, "train", allow_missing=("momentum",))
    fresh = ALBEF(tiny_config())
    load_converted(fresh, report)
    torch.testing.assert_close(fresh.visual_encoder_m.pos_embed, model.visual_encoder.pos_embed)


def test_eval_ignores_a_queue_of_another_size(tmp_path):
    model = tiny_model()
    path = tmp_path / "small_queue.pth"
    state = export_albef(model)["model"]
    state["image_queue"] = torch.zeros(64, 512)
    torch.save({"model": state}, path)
    load_model(path, tiny_config(), purpose="eval")
    with pytest.raises(
        AmcError, match=r"image_queue: checkpoint shape \(64, 512\) != model shape \(64, 1024\)"
    ):
        load_model(path, tiny_config(), purpose="train")


def test_unreadable_files_are_clear_errors(tmp_path):
    model = tiny_model()
    good = tmp_path / "good.pt"
    save_checkpoint(good, model)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(AmcError, match=r"truncated\.pt: cannot read checkpoint, the file is truncated"):
        load_state_dict_file(truncated)
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(AmcError, match=r"notes\.txt: cannot read checkpoint"):
        load_state_dict_file(text)
    with pytest.raises(AmcError, match=r"missing\.pt: checkpoint not found"):
        load_state_dict_file(tmp_path / "missing.pt")
    listed = tmp_path / "list.pt"
    torch.save([1, 2], listed)
    with pytest.raises(AmcError, match=r"list\.pt: not a checkpoint"):
        load_state_dict_file(listed)
    foreign = tmp_path / "foreign.pt"
    torch.save({"format": "other/2", "model": {}}, foreign)
    with pytest.raises(AmcError, match="unknown checkpoint format 'other/2'"):
        load_state_dict_file(foreign)
