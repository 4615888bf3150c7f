"""Checkpoint conversion: every key mapped explicitly, loud errors, round trips.

Full-size key maps are checked on the meta device (names and shapes only, no memory);
real loads use the tiny model.
"""

from __future__ import annotations

import argparse
import functools
import logging
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

from amc.cli import main as amc_main
from amc.gradcam import gradcam_eval
from amc.io import AmcError
from amc.models import ALBEF, ModelConfig
from amc.models.checkpoint import (
    FORMAT,
    convert_checkpoint,
    convert_to_model_keys,
    export_albef,
    export_amc_released,
    load_converted,
    load_model,
    load_model_and_tokenizer,
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


def _tiny_vocab(path, size=512, first="red") -> list[str]:
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", first] + [f"w{i}" for i in range(size - 6)]
    path.write_text("\n".join(tokens) + "\n")
    return tokens


def test_own_checkpoints_carry_config_and_vocabulary_and_flags_override(tmp_path, caplog):
    model = tiny_model()
    tokens = _tiny_vocab(tmp_path / "vocab.txt")
    path = tmp_path / "ours.pt"
    save_checkpoint(path, model, vocab=tokens)
    assert read_checkpoint(path).vocab == tokens
    bundle = load_model_and_tokenizer(path, image_res=128)  # nothing but the checkpoint
    assert bundle.tokenizer.ids_to_tokens == tokens and bundle.model.image_grid == (16, 16)
    _tiny_state_equal(model, load_model_and_tokenizer(path).model)
    # the flags win: another vocabulary file (a warning says it differs), another config file
    other = _tiny_vocab(tmp_path / "other.txt", first="blue")
    with caplog.at_level(logging.WARNING):
        bundle = load_model_and_tokenizer(
            path, model_config=BASE_YAML.parent / "tiny.yaml", vocab=tmp_path / "other.txt"
        )
    assert bundle.tokenizer.ids_to_tokens == other and "differs from the one saved" in caplog.text
    _tiny_vocab(tmp_path / "small.txt", size=100)
    with pytest.raises(
        AmcError, match=r"small.txt: 100 tokens, but the model configuration declares vocab_size 512"
    ):
        load_model_and_tokenizer(path, vocab=tmp_path / "small.txt")


def test_checkpoints_without_config_or_vocabulary_need_the_flags(tmp_path):
    model = tiny_model()
    older = tmp_path / "older.pt"
    save_checkpoint(older, model)  # written before checkpoints carried their vocabulary
    with pytest.raises(
        AmcError,
        match=r"older.pt: an older checkpoint of this project carries no vocabulary: give one \(--vocab",
    ):
        load_model_and_tokenizer(older)
    albef = tmp_path / "ALBEF.pth"
    torch.save(export_albef(model), albef)
    with pytest.raises(
        AmcError,
        match=r"ALBEF.pth: a checkpoint in the albef layout .* no model configuration: give one \(--model-config",
    ):
        load_model_and_tokenizer(albef, vocab=tmp_path / "v.txt")
    with pytest.raises(AmcError, match=r"ALBEF.pth: a checkpoint in the albef layout carries no vocabulary"):
        load_model_and_tokenizer(albef, model_config=BASE_YAML.parent / "tiny.yaml")
    _tiny_vocab(tmp_path / "v.txt")
    bundle = load_model_and_tokenizer(albef, BASE_YAML.parent / "tiny.yaml", tmp_path / "v.txt")
    _tiny_state_equal(model, bundle.model)
    code = amc_main(
        ["gradcam", "--checkpoint", str(albef), "--image", "x.png", "--text", "a", "--output", "h.npy"]
    )
    assert code == 2


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


# ------------------------------------------------------- the AMC authors' released checkpoints

# What the released Pretrain.py stores as 'config': its configs/Pretrain.yaml, plain values
# (PyYAML reads 1e-5 as a string).
RELEASED_CONFIG = {
    "train_file": ["data/vg_descriptions.json", "data/vg_attributes_spatial.json", "data/vg_attributes.json"],
    "bert_config": "configs/config_bert.json",
    "image_res": 256,
    "batch_size": 64,
    "temp": 0.07,
    "queue_size": 65536,
    "alpha": 0.4,
    "phrase_input": True,
    "optimizer": {"opt": "adamW", "lr": "1e-5", "weight_decay": 0.02},
    "schedular": {"sched": "cosine", "lr": "1e-5", "epochs": 30, "warmup_epochs": 20},
}


def _optimizer_states(model: ALBEF) -> tuple[dict, dict]:
    """A real AdamW state after one step, and an lr scheduler's state, as Pretrain.py saves them."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5, weight_decay=0.02)
    sum(p.sum() for p in params).backward()
    optimizer.step()
    model.zero_grad(set_to_none=True)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: 1.0)
    return optimizer.state_dict(), scheduler.state_dict()


def _released_file(tmp_path, model: ALBEF, name: str = "best_flickr.pth", **entries):
    optimizer, lr_scheduler = _optimizer_states(tiny_model())
    exported = export_amc_released(
        model, RELEASED_CONFIG, epoch=17, optimizer=optimizer, lr_scheduler=lr_scheduler
    )
    exported.update(entries)
    path = tmp_path / name
    torch.save(exported, path)
    return path


class TrainingArgs:
    """A class of this test module: pickling an instance makes a file the safe loader refuses."""

    def __init__(self) -> None:
        self.lr = 1e-5


def test_export_amc_released_has_the_released_key_list_at_full_size():
    exported = export_amc_released(_meta_model(), {"image_res": 256}, epoch=3)
    assert list(exported) == ["model", "config", "epoch"]
    golden = read_key_list("amc_checkpoint_keys.txt")
    assert [(k, tuple(v.shape)) for k, v in exported["model"].items()] == [(k, s) for k, s, _ in golden]


def test_released_layout_with_config_and_optimizer_loads_safely_and_evaluates(tmp_path):
    model = tiny_model()
    model.dequeue_and_enqueue(torch.ones(64, 64), torch.ones(64, 64))
    path = _released_file(tmp_path, model)
    assert torch.load(path, weights_only=True)["config"] == RELEASED_CONFIG  # plain data only

    checkpoint = read_checkpoint(path)
    assert checkpoint.layout == "albef" and checkpoint.model_config is None
    assert sorted(checkpoint.extra) == ["config", "epoch", "lr_scheduler", "optimizer"]
    assert checkpoint.extra["epoch"] == 17 and "state" in checkpoint.extra["optimizer"]
    assert {"queue_ptr_img", "queue_ptr_txt"} <= set(checkpoint.state_dict)
    assert "text_encoder.bert.embeddings.word_embeddings.weight" in checkpoint.state_dict

    # Only 'model' is used: the file's config (image_res 256, queue 65536) does not shape the model.
    loaded = load_model(path, tiny_config(), purpose="train")
    _tiny_state_equal(model, loaded)
    assert int(loaded.queue_ptr) == 64
    evaluated = load_model(path, tiny_config(), purpose="eval").eval()
    images, ids, mask = tiny_batch(model)
    with torch.no_grad():
        embeds = model.encode_image(images)
    torch.testing.assert_close(
        gradcam_eval(evaluated, evaluated.encode_image(images).detach(), ids, mask),
        gradcam_eval(model.eval(), embeds, ids, mask),
    )


def test_a_file_the_safe_loader_refuses_names_the_conversion_command(tmp_path):
    path = _released_file(tmp_path, tiny_model(), args=TrainingArgs())
    with pytest.raises(AmcError) as error:
        read_checkpoint(path)
    message = str(error.value)
    assert "refused by the safe loader" in message and "TrainingArgs" in message
    assert f"amc convert-checkpoint {path} CONVERTED.pth --trust" in message
    with pytest.raises(AmcError, match="amc convert-checkpoint"):
        load_model(path, tiny_config())


def test_convert_checkpoint_refuses_without_trust(tmp_path, caplog):
    src = _released_file(tmp_path, tiny_model(), args=TrainingArgs())
    dst = tmp_path / "converted.pth"
    with caplog.at_level(logging.ERROR):
        assert amc_main(["convert-checkpoint", str(src), str(dst)]) == 2
    assert "arbitrary code" in caplog.text and "--trust" in caplog.text
    assert not dst.exists()
    with pytest.raises(AmcError, match="must not replace its source"):
        convert_checkpoint(src, src, trust=True)
    with pytest.raises(AmcError, match="must not replace its source"):
        convert_checkpoint(src, tmp_path / "." / src.name, trust=True)


def test_convert_checkpoint_with_trust_writes_a_file_every_command_loads(tmp_path, caplog):
    model = tiny_model()
    src = _released_file(
        tmp_path, model, args=argparse.Namespace(lr=1e-5, output_dir="out"), extra=TrainingArgs()
    )
    dst = tmp_path / "converted" / "best_flickr.pth"
    with caplog.at_level(logging.WARNING):
        assert amc_main(["convert-checkpoint", str(src), str(dst), "--trust"]) == 0
    assert "arbitrary code" in caplog.text  # the warning names the risk before unpickling
    assert "checkpoint['extra'] (test_checkpoint.TrainingArgs)" in caplog.text  # what was left out
    assert sorted(p.name for p in dst.parent.iterdir()) == ["best_flickr.pth"]  # atomic: no temp file

    converted = read_checkpoint(dst)  # the safe loader reads it
    assert converted.extra["args"] == {"lr": 1e-5, "output_dir": "out"} and converted.extra["extra"] is None
    assert converted.extra["config"] == RELEASED_CONFIG and converted.extra["epoch"] == 17
    _tiny_state_equal(model, load_model(dst, tiny_config(), purpose="train"))

    # A file the safe loader reads needs no trust: it is written as it is.
    again = convert_checkpoint(dst, tmp_path / "again.pth")
    assert not again.unpickled and not again.dropped
    _tiny_state_equal(model, load_model(tmp_path / "again.pth", tiny_config(), purpose="train"))


def test_export_checkpoint_cli_writes_the_released_layout(tmp_path):
    model = tiny_model()
    src = tmp_path / "checkpoint_final.pt"
    run_config = {"seed": 0, "method": {"name": "amc"}, "optim": {"lr": 1e-4}}
    save_checkpoint(src, model, step=60, epoch=2, run_config=run_config, method="amc")
    dst = tmp_path / "released" / "best_demo.pth"
    assert amc_main(["export-checkpoint", str(src), str(dst), "--layout", "amc-released"]) == 0

    saved = torch.load(dst, weights_only=True)
    assert list(saved) == ["model", "config", "epoch"] and saved["epoch"] == 2
    assert saved["config"] == run_config
    keys = list(saved["model"])
    assert "queue_ptr" not in keys and keys[3:5] == ["queue_ptr_img", "queue_ptr_txt"]
    assert any(k.startswith("text_encoder.bert.") for k in keys)
    assert read_checkpoint(dst).layout == "albef"
    _tiny_state_equal(model, load_model(dst, tiny_config(), purpose="train"))

    assert amc_main(["export-checkpoint", str(src), str(tmp_path / "a.pth"), "--layout", "albef"]) == 0
    assert list(torch.load(tmp_path / "a.pth", weights_only=True)) == ["model"]
    assert amc_main(["export-checkpoint", str(src), str(src), "--layout", "albef"]) == 2
