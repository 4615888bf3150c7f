"""The training engine: configuration, a loss that goes down, exact resume after a kill, two processes."""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import json
import math
import re
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
import yaml

from amc.io import AmcError
from amc.objectives import build_objectives
from amc.run_config import OptimConfig, load_run_config
from amc.train import TrainingStep, alpha_at, build_optimizer, lr_at, numerics
from tests.helpers import (
    REPO,
    SMALL,
    SPECIAL_IDS,
    TINY_MODEL,
    checkpoint_state,
    read_metrics,
    records_subset,
    run_amc,
    subprocess_env,
    tiny_model,
    train_batch,
    write_run_config,
)

PRETRAIN_OBJECTIVES = {
    "itc": {"weight": 1.0},
    "itm": {"weight": 1.0},
    "mlm": {"weight": 1.0, "probability": 0.15},
}


# --------------------------------------------------------------------------- configuration


def test_overrides_parse_yaml_values_and_reject_unknown_keys(tmp_path):
    base = ["model_config=m.yaml", "vocab=v", "data.path=r.jsonl"]
    config = load_run_config(
        None, [*base, "optim.epochs=3", "method.objectives.amc.delta_max=0.25", "optim.lr=3e-5"]
    )
    assert config.optim.epochs == 3
    assert config.optim.lr == 3e-5  # YAML 1.1 alone would read "3e-5" as a string
    assert config.method.objectives["amc"]["delta_max"] == 0.25
    with pytest.raises(AmcError, match="unknown configuration key 'optim.epoch'"):
        load_run_config(None, [*base, "optim.epoch=3"])
    with pytest.raises(AmcError, match="data.kind"):
        load_run_config(None, [*base, "data.kind=boxes"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim: {lr: 1e-4, warmup: 3}\n")
    with pytest.raises(AmcError, match=r"bad.yaml: unknown configuration key 'optim.warmup'"):
        load_run_config(str(bad), base)


def test_a_method_file_replaces_the_objectives_as_a_whole(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"method": {"name": "albef_vg", "objectives": PRETRAIN_OBJECTIVES}}))
    config = load_run_config(str(path), ["model_config=m", "vocab=v", "data.path=p"])
    assert set(config.method.objectives) == {"itc", "itm", "mlm"}


BASE = ["model_config=m.yaml", "vocab=v", "data.path=r.jsonl"]


def test_defaults_then_the_file_then_the_overrides_key_by_key(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(
        "optim: {lr: 2.0e-4, batch_size: 16}\ndata: {augment: {hflip: 0.1}}\nalpha: 0.3\n"
        "method: {objectives: {itc: {weight: 2.0}}}\n"
    )
    config = load_run_config(
        str(path), [*BASE, "optim.batch_size=8", "data.augment.color_jitter=[0.1, 0.2, 0.3, 0.0]"]
    )
    assert (config.optim.lr, config.optim.batch_size, config.optim.epochs) == (2e-4, 8, 30)
    augment = config.data.augment
    assert (augment.hflip, augment.grayscale, augment.color_jitter) == (
        0.1,
        0.2,
        [0.1, 0.2, 0.3, 0.0],
    )
    assert config.alpha == 0.3 and config.method.objectives == {"itc": {"weight": 2.0}}
    assert (config.model_config, config.vocab, config.data.path) == ("m.yaml", "v", "r.jsonl")
    # each call starts from the defaults: nothing leaks from one configuration into the next
    assert load_run_config(None, BASE).optim.batch_size == 64
    assert load_run_config(None, BASE).method.objectives["amc"]["delta_mean"] == 0.1


@pytest.mark.parametrize(
    ("override", "key", "value"),
    [
        ("optim.lr=3e-5", ("optim", "lr"), 3e-5),  # YAML 1.1 alone would keep "3e-5" a string
        ("optim.min_lr=2E-6", ("optim", "min_lr"), 2e-6),
        ("optim.lr=.5e-3", ("optim", "lr"), 5e-4),
        ("data.path=1e5.jsonl", ("data", "path"), "1e5.jsonl"),  # not a number: kept as written
        (
            "method.objectives.vmrm_contrastive.top_k=3",
            ("method", "objectives", "vmrm_contrastive", "top_k"),
            3,
        ),
        ("method.objectives.amc=null", ("method", "objectives", "amc"), None),  # an objective switched off
        ("init_checkpoint=a b.pt", ("init_checkpoint",), "a b.pt"),
        ("seed = 4", ("seed",), 4),
    ],
)
def test_an_override_sets_what_it_names(override, key, value):
    node = load_run_config(None, [*BASE, override]).to_dict()
    for part in key:
        node = node[part]
    assert node == value and type(node) is type(value)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["optim.epoch=3"], r"command line \(optim.epoch=3\): unknown configuration key \'optim.epoch\'"),
        (["optimiser.lr=1"], r"command line \(optimiser.lr=1\): unknown configuration key \'optimiser.lr\'"),
        (["alpha.x=1"], r"command line \(alpha.x=1\): \'alpha\' is a value, not a section"),
        (["optim.lr"], "override 'optim.lr' is not key=value"),
        (["data.kind=boxes"], r"data.kind: \'boxes\' is not one of \[\'records\', \'captions\'\]"),
        (["optim.schedule=linear"], r"optim.schedule: 'linear' is not one of \['released', 'cosine'\]"),
        (["precision=auto"], r"precision: 'auto' is not one of \['tf32', 'fp32', 'bf16'\]"),
        (["vocab=null"], "vocab: a value is required, not null"),
        (["model_config="], "model_config: a value is required, not null"),
        (["data.path=null"], "data.path: a value is required, not null"),
    ],
)
def test_a_bad_configuration_names_the_key(overrides, message):
    with pytest.raises(AmcError, match=message):
        load_run_config(None, [*BASE, *overrides])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("method: {objectives: {amc: 5}}", "method.objectives.amc: 5 is not of type 'object', 'null'"),
        ("method: {objectives: {amc: {weight: -1}}}", "method.objectives.amc.weight: -1 is less than the minimum of 0"),
        ("optim: {lr: .nan}", "optim.lr: nan is not a finite number"),
    ],
)  # fmt: skip
def test_a_bad_value_from_a_file_names_the_file(tmp_path, text, message):
    """Also inside a method's objectives, which a file sets as a whole."""
    path = tmp_path / "method.yaml"
    path.write_text(text + "\n")
    with pytest.raises(AmcError, match=f"^{re.escape(f'{path}: {message}')}$"):
        load_run_config(str(path), BASE)


def test_a_bad_configuration_file_names_the_file(tmp_path):
    with pytest.raises(AmcError, match=r"nowhere.yaml: run configuration not found"):
        load_run_config(str(tmp_path / "nowhere.yaml"), BASE)
    listed = tmp_path / "list.yaml"
    listed.write_text("- a\n- b\n")
    with pytest.raises(AmcError, match=r"list.yaml: expected a mapping at the top level"):
        load_run_config(str(listed), BASE)
    broken = tmp_path / "broken.yaml"
    broken.write_text("optim: {lr: [\n")
    with pytest.raises(AmcError, match=r"broken.yaml:2: not valid YAML"):
        load_run_config(str(broken), BASE)
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert load_run_config(str(empty), BASE).optim.lr == 1e-5
    section = tmp_path / "section.yaml"
    section.write_text("optim: {lr: 1.0e-4, warmup: {steps: 3}}\n")
    with pytest.raises(AmcError, match=r"section.yaml: unknown configuration key 'optim.warmup.steps'"):
        load_run_config(str(section), BASE)


@pytest.mark.parametrize("pipeline", ["released", "torchvision"])
@pytest.mark.parametrize(
    ("key", "value", "attribute"),
    [
        ("data.image_res", 48, "image_res"),
        ("data.mask_size", 24, "mask_size"),
        ("data.augment.hflip", 0.9, "hflip_p"),
        ("data.augment.grayscale", 0.7, "grayscale_p"),
        ("data.augment.color_jitter", [0.1, 0.2, 0.3, 0.05], "color_jitter"),
        ("data.augment.color_jitter_p", 0.25, "color_jitter_p"),
        ("data.augment.swap_left_right", True, "swap_left_right"),
    ],
)
def test_every_data_key_reaches_the_training_transform(tmp_path, pipeline, key, value, attribute):
    from amc.records import Record, save_records
    from amc.train import build_dataset

    save_records(tmp_path / "r.jsonl", [Record("r/0", "vg", "train", "a.png", 10, 10, "a", [[1, 1, 5, 5]])])
    base = [
        "model_config=m",
        "vocab=v",
        f"data.path={tmp_path / 'r.jsonl'}",
        f"data.augment.pipeline={pipeline}",
    ]
    default = build_dataset(load_run_config(None, base)).transform
    changed = build_dataset(load_run_config(None, [*base, f"{key}={json.dumps(value)}"])).transform
    expected = tuple(value) if isinstance(value, list) else value
    assert getattr(changed, attribute) == expected != getattr(default, attribute)
    assert type(changed) is type(default)


def test_the_data_kind_and_seed_choose_the_dataset(tmp_path):
    from amc.data.datasets import CaptionDataset, PhraseBoxDataset
    from amc.records import Record, save_records
    from amc.train import build_dataset

    rows = [Record(f"r/{i}", "vg", "train", "a.png", 10, 10, "a", [[1, 1, 5, 5]]) for i in range(3)]
    save_records(tmp_path / "r.jsonl", rows)
    (tmp_path / "captions.json").write_text(
        '[{"image": "a.png", "caption": "a"}, {"image": "b.png", "caption": ["b", "c"]}]'
    )
    records = build_dataset(load_run_config(None, [*BASE[:2], f"data.path={tmp_path / 'r.jsonl'}", "seed=9"]))
    assert type(records) is PhraseBoxDataset and records.seed == 9 and len(records) == 3
    captions = build_dataset(
        load_run_config(None, [*BASE[:2], "data.kind=captions", f"data.path={tmp_path / 'captions.json'}"])
    )
    assert (
        type(captions) is CaptionDataset
        and captions.root == tmp_path
        and len(captions) == 2
        and captions.seed == 0
    )


def test_torchrun_sets_rank_world_size_device_and_backend(monkeypatch):
    import amc.train

    started = []
    monkeypatch.setattr(amc.train.dist, "is_initialized", lambda: bool(started))
    monkeypatch.setattr(amc.train.dist, "init_process_group", lambda backend: started.append(backend))
    monkeypatch.setattr(amc.train.dist, "get_rank", lambda: 1)
    monkeypatch.setattr(amc.train.dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(amc.train.torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    procs = amc.train.setup_processes()
    assert (procs.rank, procs.world_size, procs.device, procs.is_main) == (1, 2, torch.device("cpu"), False)
    assert started == ["gloo"]
    devices = []
    monkeypatch.setattr(amc.train.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(amc.train.torch.cuda, "set_device", devices.append)
    started.clear()
    procs = amc.train.setup_processes()
    assert procs.device == torch.device("cuda", 1) and devices == [1] and started == ["nccl"]
    assert amc.train.setup_processes().device == torch.device("cuda", 1) and started == ["nccl"]  # once
    monkeypatch.delenv("WORLD_SIZE")
    assert amc.train.setup_processes() == amc.train.Processes(0, 1, torch.device("cuda"))
    monkeypatch.setattr(amc.train.torch.cuda, "is_available", lambda: False)
    single = amc.train.setup_processes()
    assert single == amc.train.Processes(0, 1, torch.device("cpu")) and single.is_main


def test_the_sampler_reads_global_batches_in_virtual_rank_order():
    """Micro-batch m of process r in optimiser step t is chunk r * k + m of global batch t (of a
    permutation seeded by (seed, epoch)): k micro-batches on one process read what k processes would."""
    from amc.train import EpochSampler

    def chunks(sampler):
        items = list(sampler)
        assert len(items) == len(sampler)
        return [items[i : i + 2] for i in range(0, len(items), 2)]

    order = torch.randperm(21, generator=torch.Generator().manual_seed(5 * 100_003 + 0)).tolist()
    two_processes = [chunks(EpochSampler(21, 2, seed=5, rank=r, world_size=2)) for r in (0, 1)]
    accumulated = chunks(EpochSampler(21, 2, seed=5, grad_accum=2))
    mixed = [chunks(EpochSampler(21, 2, seed=5, rank=r, world_size=2, grad_accum=2)) for r in (0, 1)]
    steps = [order[g * 4 : (g + 1) * 4] for g in range(5)]  # 21 // 4 = 5 global batches of 4, 1 left out
    assert two_processes == [[step[0:2] for step in steps], [step[2:4] for step in steps]]
    assert accumulated == [chunk for step in steps for chunk in (step[0:2], step[2:4])]
    eight = [order[g * 8 : (g + 1) * 8] for g in range(2)]  # global batches of 2 x 2 processes x 2 micro
    assert (
        mixed
        == [
            [c for b in eight for c in (b[0:2], b[2:4])],  # virtual ranks 0, 1
            [c for b in eight for c in (b[4:6], b[6:8])],  # virtual ranks 2, 3
        ]
    )
    sampler = EpochSampler(21, 2, seed=5, grad_accum=2)
    assert (sampler.steps_per_epoch, sampler.batches_per_epoch) == (5, 10)
    sampler.set_epoch(3, start_batch=4)  # resumed mid-epoch
    epoch3 = torch.randperm(21, generator=torch.Generator().manual_seed(5 * 100_003 + 3)).tolist()
    assert list(sampler) == epoch3[8:20] and len(sampler) == 12
    with pytest.raises(
        AmcError,
        match=r"3 training samples are fewer than one global batch \(2 x 1 processes x grad_accum 2\)",
    ):
        EpochSampler(3, 2, seed=0, grad_accum=2)


def test_each_micro_batch_draws_from_its_own_step_and_virtual_rank():
    from amc.train import step_seed

    seeds = {step_seed(seed, step, rank) for seed in (0, 1) for step in range(50) for rank in range(8)}
    assert len(seeds) == 2 * 50 * 8 and all(0 <= s < 2**63 - 1 for s in seeds)
    assert step_seed(3, 7, 2) == step_seed(3, 7, 2) == (3 * 1_000_003 + 7 * 1_009 + 2 * 7_919)


def test_collate_stacks_the_samples_and_counts_replaced_images():
    from amc.train import collate

    samples = [
        {
            "image": torch.full((3, 2, 2), float(i)),
            "text": f"t{i}",
            "mask": torch.full((2, 2), float(i)),
            "replaced": i,
        }
        for i in range(3)
    ]
    batch = collate(samples)
    assert batch["image"].shape == (3, 3, 2, 2) and batch["image"][2].eq(2).all()
    assert batch["box_mask"].shape == (3, 2, 2) and batch["box_mask"][1].eq(1).all()
    assert batch["text"] == ["t0", "t1", "t2"] and batch["images_replaced"] == 3
    captions = collate([{"image": torch.zeros(3, 2, 2), "text": "a"}])
    assert "box_mask" not in captions and captions["images_replaced"] == 0


def test_the_text_of_a_training_batch_is_cleaned_cut_to_max_words_then_max_tokens():
    from amc.models.tokenizer import AlbefTokenizer
    from amc.train import to_train_batch

    tokenizer = AlbefTokenizer(
        ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "red", "big", "box", "ab", "##ab"]
    )
    raw = {
        "image": torch.zeros(2, 3, 4, 4),
        "text": ["A red, big box!", "abab red"],
        "box_mask": torch.ones(2, 4, 4),
    }
    data = load_run_config(None, [*BASE, "data.max_words=3", "data.max_tokens=4"]).data
    batch = to_train_batch(raw, tokenizer, data, torch.device("cpu"))
    assert batch.input_ids.tolist() == [[2, 5, 6, 7], [2, 9, 10, 6]]  # [CLS] + pieces, at most 4
    assert batch.attention_mask.tolist() == [[1, 1, 1, 1], [1, 1, 1, 1]]
    assert torch.equal(batch.box_mask, raw["box_mask"])
    assert batch.image is not None and batch.size == 2
    data = dataclasses.replace(data, max_tokens=3)
    assert to_train_batch(raw, tokenizer, data, torch.device("cpu")).input_ids.shape == (2, 3)
    captions = to_train_batch(
        {"image": raw["image"], "text": ["a box"]}, tokenizer, data, torch.device("cpu")
    )
    assert captions.box_mask is None


def test_the_logged_step_is_the_mean_over_its_micro_batches_and_resume_trims_the_log(tmp_path):
    from amc.train import MicroBatchOutput, _mean_logs, _trim_metrics

    outputs = [
        MicroBatchOutput(torch.tensor(1.0), {"loss_itc": 0.5, "loss_amc": 1.0}, None),
        MicroBatchOutput(torch.tensor(3.0), {"loss_itc": 1.5, "loss_amc": 0.0}, None),
    ]
    assert _mean_logs(outputs) == {"loss": 2.0, "loss_itc": 1.0, "loss_amc": 0.5}
    log = tmp_path / "metrics.jsonl"
    _trim_metrics(log, 3)  # no log yet: nothing to do
    assert not log.exists()
    log.write_text("".join(json.dumps({"step": s, "loss": s}) + "\n" for s in (1, 2, 3, 4, 5)))
    _trim_metrics(log, 3)
    assert [r["step"] for r in read_metrics(log)] == [1, 2, 3]


# --------------------------------------------------------------------------- schedule, alpha, optimiser

RELEASED = {
    "schedule": "released",
    "lr": 1e-5,
    "min_lr": 1e-6,
    "warmup_lr": 1e-6,
    "warmup_stairs": 20,
    "stair_steps": 100,
    "epochs": 30,
    "warmup_steps": 100,  # read by the cosine schedule only
}


def released_loop_lrs(steps_per_epoch: int, optim: dict) -> list[float]:
    """The lr of every optimiser step of a released run, by replaying ``Pretrain.py``'s calls into
    timm's CosineLRScheduler (warmup_prefix, cycle_limit 1, t_in_epochs), written out here."""
    lr, min_lr, warmup_lr = optim["lr"], optim["min_lr"], optim["warmup_lr"]
    warmup_t, epochs, step_size = optim["warmup_stairs"], optim["epochs"], optim["stair_steps"]

    def scheduler_lr(t: int) -> float:  # CosineLRScheduler._get_lr
        if t < warmup_t:
            return warmup_lr + t * (lr - warmup_lr) / warmup_t
        t -= warmup_t
        if t // epochs >= 1:
            return min_lr
        return min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * (t % epochs) / epochs))

    current = warmup_lr if warmup_t else lr  # set by the scheduler's constructor
    used = []
    for epoch in range(epochs):
        if epoch > 0:
            current = scheduler_lr(epoch + warmup_t)
        for i in range(steps_per_epoch):
            used.append(current)  # optimizer.step() with the current lr
            if epoch == 0 and i % step_size == 0 and i <= warmup_t * step_size:
                current = scheduler_lr(i // step_size)
    return used


def test_released_schedule_at_chosen_steps():
    per_epoch = 3000
    total = 30 * per_epoch
    stair = (1e-5 - 1e-6) / 20

    optim = OptimConfig.from_defaults(**RELEASED)

    def lr(s):
        return lr_at(s, per_epoch, total, optim)

    assert lr(0) == lr(1) == lr(100) == pytest.approx(1e-6, rel=1e-12)  # stair 0 until step 100
    assert lr(101) == lr(200) == pytest.approx(1e-6 + stair, rel=1e-12)
    assert lr(201) == pytest.approx(1e-6 + 2 * stair, rel=1e-12)
    assert lr(2000) == pytest.approx(1e-6 + 19 * stair, rel=1e-12)
    assert lr(2001) == lr(per_epoch - 1) == pytest.approx(1e-5, rel=1e-12)  # to the end of epoch 0
    assert (
        lr(per_epoch)
        == lr(2 * per_epoch - 1)
        == pytest.approx(1e-6 + 0.5 * 9e-6 * (1 + math.cos(math.pi / 30)), rel=1e-12)
    )  # epoch 1, constant within it
    assert lr(29 * per_epoch + 17) == pytest.approx(1e-6 + 0.5 * 9e-6 * (1 + math.cos(math.pi * 29 / 30)))
    replay = released_loop_lrs(per_epoch, RELEASED)
    assert all(lr(s) == pytest.approx(replay[s], rel=1e-12) for s in range(0, total, 7)), (
        "differs from the loop"
    )


def test_released_schedule_on_short_epochs_ends_epoch_0_mid_staircase():
    optim = {**RELEASED, "epochs": 3}
    lrs = [lr_at(s, 250, 750, OptimConfig.from_defaults(**optim)) for s in range(750)]
    assert lrs == pytest.approx(released_loop_lrs(250, optim), rel=1e-12)
    stair = (1e-5 - 1e-6) / 20
    assert sorted(set(lrs[:250])) == pytest.approx([1e-6, 1e-6 + stair, 1e-6 + 2 * stair])
    assert lrs[250:500] == pytest.approx([1e-6 + 4.5e-6 * (1 + math.cos(math.pi / 3))] * 250)
    assert lrs[500:] == pytest.approx([1e-6 + 4.5e-6 * (1 + math.cos(2 * math.pi / 3))] * 250)


def test_released_schedule_without_warm_up_starts_at_lr():
    optim = {**RELEASED, "warmup_stairs": 0, "epochs": 4}
    released = OptimConfig.from_defaults(**optim)
    assert [lr_at(s, 10, 40, released) for s in range(40)] == pytest.approx(released_loop_lrs(10, optim))
    assert lr_at(0, 10, 40, released) == 1e-5


def test_cosine_schedule_warms_up_then_decays_to_min_lr():
    optim = OptimConfig.from_defaults(schedule="cosine", lr=1.0, min_lr=0.1, warmup_steps=4)
    assert lr_at(0, 7, 100, optim) == pytest.approx(0.25)
    assert lr_at(3, 7, 100, optim) == pytest.approx(1.0)
    assert lr_at(100, 7, 100, optim) == pytest.approx(0.1)
    values = [lr_at(s, 7, 100, optim) for s in range(4, 101)]
    assert all(a >= b for a, b in zip(values, values[1:], strict=False))
    # the cosine over the steps after the warm-up: lr at its first step, halfway at 4 + 48
    assert lr_at(4, 7, 100, optim) == pytest.approx(1.0)
    assert lr_at(52, 7, 100, optim) == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi / 2)))
    assert lr_at(28, 7, 100, optim) == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi / 4)))
    assert lr_at(150, 7, 100, optim) == pytest.approx(0.1)  # min_lr after the last step, not back up
    assert lr_at(5, 7, 5, optim) == pytest.approx(0.1)  # one step after the warm-up: already the end
    assert lr_at(0, 7, 100, dataclasses.replace(optim, warmup_steps=0)) == pytest.approx(1.0)


def test_replicas_are_compared_bit_for_bit_with_rank_0(tmp_path, monkeypatch):
    """After training each process checks that it holds rank 0's weights (here one gloo process,
    whose broadcast is made to deliver other weights once)."""
    import torch.distributed as dist

    from amc.train import Processes, _check_replicas_identical

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        model, procs = tiny_model(**SMALL), Processes(0, 1, torch.device("cpu"))
        _check_replicas_identical(model, procs)
        real = dist.broadcast

        def rank_0_differs(tensor, src):
            assert src == 0
            real(tensor, src=src)
            tensor[5] += 1e-6

        monkeypatch.setattr(dist, "broadcast", rank_0_differs)
        with pytest.raises(AmcError, match="^rank 0: weights differ between processes after training$"):
            _check_replicas_identical(model, procs)
        monkeypatch.setattr(dist, "broadcast", real)

        def another_rank_differs(tensor, op=dist.ReduceOp.SUM):  # its flag is 0: the verdict is the minimum
            tensor.copy_(
                torch.minimum(tensor, torch.zeros_like(tensor)) if op == dist.ReduceOp.MIN else tensor
            )

        monkeypatch.setattr(dist, "all_reduce", another_rank_differs)
        with pytest.raises(
            AmcError, match="weights differ"
        ):  # every process stops, not only the one that differs
            _check_replicas_identical(model, procs)
    finally:
        dist.destroy_process_group()


def test_processes_wait_for_each_other_only_when_there_are_several(monkeypatch):
    import types

    import amc.train
    from amc.train import Processes, Run

    waited = []
    monkeypatch.setattr(amc.train.dist, "barrier", lambda: waited.append(True))
    for world_size in (1, 2, 3):
        Run.barrier(types.SimpleNamespace(procs=Processes(0, world_size, torch.device("cpu"))))
    assert len(waited) == 2


def test_alpha_ramps_over_the_optimiser_steps_of_epoch_0():
    assert [alpha_at(s, 4, 0.4) for s in range(6)] == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4, 0.4])


def _group_names(model, optimizer) -> list[set[str]]:
    names = {id(p): n for n, p in model.named_parameters()}
    return [{names[id(p)] for p in group["params"]} for group in optimizer.param_groups]


@pytest.mark.parametrize("model_yaml", ["tiny.yaml", "albef-base.yaml"])
def test_weight_decay_groups_are_the_released_ones(model_yaml):
    from amc.models.albef import ALBEF
    from amc.models.config import ModelConfig

    with torch.device("meta"):  # no memory, no initialisation cost
        model = ALBEF(ModelConfig.from_file(REPO / "config" / "models" / model_yaml))
    optimizer = build_optimizer(
        model, OptimConfig.from_defaults(lr=1e-5, weight_decay=0.02), torch.device("cpu")
    )
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.0, 0.02]  # the released order
    no_decay, decay = _group_names(model, optimizer)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert no_decay | decay == trainable and not no_decay & decay
    assert not any("_m." in n for n in trainable)  # the momentum copies are not optimised
    assert {"temp", "visual_encoder.pos_embed", "visual_encoder.cls_token"} <= decay
    assert {"visual_encoder.norm.weight", "visual_encoder.norm.bias", "vision_proj.bias"} <= no_decay
    assert "text_encoder.bert.embeddings.LayerNorm.weight" in no_decay
    assert no_decay == {n for n, p in model.named_parameters() if p.requires_grad and p.ndim == 1}
    assert {"vision_proj.weight", "text_encoder.bert.embeddings.word_embeddings.weight"} <= decay
    defaults = optimizer.defaults
    assert isinstance(optimizer, torch.optim.AdamW)
    assert (defaults["betas"], defaults["eps"], defaults["amsgrad"]) == ((0.9, 0.999), 1e-8, False)


def test_precision_modes_set_tf32_and_autocast_on_cuda_only():
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    try:
        assert isinstance(numerics("bf16", torch.device("cpu")), contextlib.nullcontext)
        numerics("tf32", torch.device("cuda"))
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
        assert isinstance(numerics("fp32", torch.device("cuda")), contextlib.nullcontext)
        assert not (torch.backends.cuda.matmul.allow_tf32 or torch.backends.cudnn.allow_tf32)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a CPU-only build warns that CUDA autocast is unavailable
            autocast = numerics("bf16", torch.device("cuda"))
        assert isinstance(autocast, torch.autocast) and autocast.fast_dtype == torch.bfloat16
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def test_paper_defaults_and_rejected_values():
    base = ["model_config=m.yaml", "vocab=v", "data.path=r.jsonl"]
    config = load_run_config(str(REPO / "config" / "runs" / "paper-finetune.yaml"), base)
    assert config.precision == "tf32"
    assert {k: getattr(config.optim, k) for k in RELEASED if k != "warmup_steps"} == {
        k: v for k, v in RELEASED.items() if k != "warmup_steps"
    }
    defaults = load_run_config(None, base)
    assert defaults.precision == "tf32" and defaults.optim.schedule == "released"
    with pytest.raises(AmcError, match=r"precision=auto\): precision: 'auto' is not one of"):
        load_run_config(None, [*base, "precision=auto"])
    with pytest.raises(AmcError, match=r"optim.schedule: 'linear' is not one of"):
        load_run_config(None, [*base, "optim.schedule=linear"])


# --------------------------------------------------------------------------- one optimiser step


def _moved_momentum_model():
    """The tiny model (training mode) with momentum copies that differ from the online weights."""
    model = tiny_model(**SMALL).train()
    with torch.no_grad():
        for _, momentum in model.model_pairs:
            for param in momentum.parameters():
                param.add_(0.05)
    return model


def test_a_training_step_updates_the_momentum_model_once_then_enqueues_every_micro_batch():
    """begin_step moves the momentum weights toward the online ones (m = 0.995); the micro-batches
    read the queues without writing them; end_step writes their momentum features in order and
    advances the pointer by the step's whole batch."""
    model = _moved_momentum_model()
    step = TrainingStep(model, build_objectives({"itc": {}, "itm": {}}), SPECIAL_IDS)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    step.begin_step()
    after = model.state_dict()
    moved = 0
    for key in before:
        if "_m." in key and before[key].is_floating_point():
            online_key = key.replace("_m.", ".", 1)
            torch.testing.assert_close(after[key], 0.995 * before[key] + 0.005 * before[online_key], msg=key)
            moved += 1
        else:
            assert torch.equal(after[key], before[key]), key  # only the momentum copies move
    assert moved > 20
    outputs = []
    for seed in (1, 2):
        outputs.append(step(train_batch(model, seed=seed), 0.4, torch.Generator().manual_seed(seed)))
        assert int(model.queue_ptr) == 0 and torch.equal(model.image_queue, before["image_queue"])
    step.end_step(outputs)
    assert int(model.queue_ptr) == 8  # two micro-batches of 4
    features = [out.queue_features for out in outputs]
    torch.testing.assert_close(model.image_queue[:, :8], torch.cat([f.image_feat for f in features]).T)
    torch.testing.assert_close(model.text_queue[:, :8], torch.cat([f.text_feat for f in features]).T)
    assert torch.equal(model.image_queue[:, 8:], before["image_queue"][:, 8:])


def test_a_step_without_the_momentum_encoders_enqueues_nothing():
    model = _moved_momentum_model()
    step = TrainingStep(model, build_objectives({"itc": {"mode": "in_batch"}}), SPECIAL_IDS)
    out = step(train_batch(model), 0.4, torch.Generator().manual_seed(0))
    assert out.queue_features is None
    step.end_step([out])
    assert int(model.queue_ptr) == 0


def test_the_step_loss_is_the_sum_of_the_weighted_objectives():
    model = tiny_model(**SMALL)
    batch = train_batch(model)
    objectives = build_objectives({"itc": {"weight": 0.5}, "mlm": {"weight": 2.0}})
    out = TrainingStep(model, objectives, SPECIAL_IDS)(batch, 0.0, torch.Generator().manual_seed(0))
    alone = [
        TrainingStep(model, [objective], SPECIAL_IDS)(batch, 0.0, torch.Generator().manual_seed(0))
        for objective in objectives
    ]
    assert out.loss.item() == pytest.approx(0.5 * alone[0].logs["loss_itc"] + 2.0 * alone[1].logs["loss_mlm"])
    assert set(out.logs) == {"loss_itc", "loss_mlm"}


# --------------------------------------------------------------------------- training runs


def test_a_short_run_in_process_wires_the_configuration_through(tmp_path, ci_data, monkeypatch):
    """Three optimiser steps of two micro-batches of 4 at 32 px, in this process: what the loop
    builds from the run configuration, what it logs and saves, and an exact resume."""
    import amc.train

    built, batches = {"build_dataset": [], "build_optimizer": []}, []
    for name in built:
        real = getattr(amc.train, name)
        monkeypatch.setattr(
            amc.train, name, lambda *a, real=real, name=name: built[name].append(real(*a)) or built[name][-1]
        )
    real_batch = amc.train.to_train_batch
    monkeypatch.setattr(amc.train, "to_train_batch", lambda *a: batches.append(real_batch(*a)) or batches[-1])

    records = records_subset(ci_data, 16, tmp_path / "vg-16.jsonl")
    path = write_run_config(tmp_path / "run.yaml", ci_data, data__path=str(records))
    overrides = ["data.image_res=32", "data.mask_size=16", "data.max_words=3", "data.max_tokens=6",
                 "optim.batch_size=4", "optim.grad_accum=2", "optim.max_steps=3", "optim.epochs=5",
                 "optim.warmup_steps=1", "optim.weight_decay=0.05", "log_every=2", "save_every_steps=2",
                 "alpha=0.2", "seed=3", "data.augment.hflip=0.0", "data.augment.grayscale=1.0"]  # fmt: skip
    config = load_run_config(str(path), overrides)
    result = amc.train.train(config, tmp_path / "out")

    out = tmp_path / "out"
    assert result.steps == 3 and (out / "checkpoint_final.pt").is_file()
    (dataset,), (optimizer,) = built["build_dataset"], built["build_optimizer"]
    assert (dataset.transform.image_res, dataset.transform.mask_size, dataset.seed) == (32, 16, 3)
    assert (dataset.transform.hflip_p, dataset.transform.grayscale_p) == (0.0, 1.0)
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.0, 0.05]
    assert len(batches) == 6 and all(b.image.shape == (4, 3, 32, 32) for b in batches)
    assert all(b.box_mask.shape == (4, 16, 16) for b in batches)
    assert max(b.input_ids.shape[1] for b in batches) <= 6

    rows = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3]  # the first step, every log_every, the last
    assert [r["epoch"] for r in rows] == [0, 0, 1]  # 16 pairs / (4 x 2) = 2 steps per epoch
    assert [r["lr"] for r in rows] == pytest.approx([lr_at(s, 2, 3, config.optim) for s in range(3)])
    assert [r["alpha"] for r in rows] == pytest.approx([0.0, 0.1, 0.2])
    assert all(
        {"loss", "loss_itc", "loss_itm", "loss_mlm", "loss_amc", "l_mean", "l_max"} <= set(r) for r in rows
    )
    assert all(r["images_replaced"] == 0 and r["pairs_per_s"] > 0 and r["max_memory_mb"] > 0 for r in rows)
    recorded = yaml.safe_load((out / "config.resolved.yaml").read_text())
    assert recorded == config.to_dict()
    assert list(recorded) == list(config.to_dict())  # in the documented order

    last = torch.load(out / "checkpoint_last.pt", map_location="cpu", weights_only=False)
    assert (last["step"], last["epoch"], last["batch_in_epoch"]) == (2, 1, 0)  # saved at the end of epoch 0
    final = torch.load(out / "checkpoint_final.pt", map_location="cpu", weights_only=False)
    assert (final["step"], final["epoch"], final["method"]) == (3, 1, "amc")
    weights = final["model"]
    assert int(weights["queue_ptr"]) == 3 * 8  # every step enqueued its 8 pairs
    assert weights["visual_encoder.pos_embed"].shape[1] == 1 + 4 * 4  # the model at data.image_res
    from amc.models.albef import ALBEF
    from amc.models.config import ModelConfig

    torch.manual_seed(3)  # the run's start: its seed, then the model
    start = ALBEF(ModelConfig.from_file(TINY_MODEL).replace(image_res=32))
    start.copy_params()
    start = start.state_dict()
    for key in (
        "visual_encoder_m.patch_embed.proj.weight",
        "text_proj_m.weight",
        "visual_encoder.norm.weight",
    ):
        assert not torch.equal(weights[key], start[key]), key  # the momentum model followed the training

    # Resuming from the step-2 checkpoint ends on the same weights and the same log.
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    for name in ("checkpoint_last.pt", "metrics.jsonl", "config.resolved.yaml"):
        (resumed / name).write_bytes((out / name).read_bytes())
    assert amc.train.train(config, resumed, resume=True).steps == 3
    again = checkpoint_state(resumed / "checkpoint_final.pt")
    assert all(torch.equal(again[key], weights[key]) for key in weights)
    assert [(r["step"], r["loss"]) for r in read_metrics(resumed / "metrics.jsonl")] == [
        (r["step"], r["loss"]) for r in rows
    ]
    # A complete run is not trained again.
    assert amc.train.train(config, resumed, resume=True).steps == 0


@pytest.mark.slow
def test_pretraining_lowers_the_loss(tmp_path, ci_data):
    config = write_run_config(
        tmp_path / "pretrain.yaml",
        ci_data,
        data__kind="captions",
        data__path=str(ci_data.captions),
        method={"name": "pretrain", "objectives": PRETRAIN_OBJECTIVES},
        optim__max_steps=40,
        optim__batch_size=16,
    )
    run_amc("pretrain", "--config", config, "--out", tmp_path / "out")
    rows = read_metrics(tmp_path / "out" / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, 41))
    assert {"loss_itc", "loss_itm", "loss_mlm", "lr", "pairs_per_s", "max_memory_mb"} <= set(rows[0])
    # From random weights the masked-LM term falls steadily (ln 512 = 6.24 at the start); the
    # contrastive term falls fast and then hovers, since its queue starts with random features.
    first = sum(r["loss_mlm"] for r in rows[:8]) / 8
    last = sum(r["loss_mlm"] for r in rows[-8:]) / 8
    assert last < first * 0.93, (first, last)
    assert sum(r["loss"] for r in rows[-8:]) / 8 < rows[0]["loss"] * 0.85
    final = torch.load(tmp_path / "out" / "checkpoint_final.pt", map_location="cpu", weights_only=False)
    assert final["step"] == 40
    assert final["epoch"] == rows[-1]["epoch"]  # the epoch of the last step, as released checkpoints record
    assert (tmp_path / "out" / "config.resolved.yaml").exists()


def test_amc_finetuning_logs_its_terms(tmp_path, ci_data):
    config = write_run_config(tmp_path / "amc.yaml", ci_data, optim__max_steps=3)
    run_amc(
        "train", "--config", config, "--out", tmp_path / "out", "method.objectives.amc.per_sample_mean=true"
    )
    rows = read_metrics(tmp_path / "out" / "metrics.jsonl")
    assert len(rows) == 3
    assert all({"loss_amc", "l_mean", "l_max"} <= set(r) for r in rows)
    assert all(r["l_max"] >= 0 for r in rows)
    resolved = yaml.safe_load((tmp_path / "out" / "config.resolved.yaml").read_text())
    assert resolved["method"]["objectives"]["amc"]["per_sample_mean"] is True
    # TensorBoard event files beside metrics.jsonl exactly when tensorboard is installed
    events = list((tmp_path / "out").glob("events.out.tfevents.*"))
    assert len(events) == (1 if importlib.util.find_spec("tensorboard") else 0)


def test_tensorboard_log_writes_scalars_when_installed_and_nothing_otherwise(tmp_path, monkeypatch, caplog):
    """The guard: without tensorboard one line says so; with it (a stand-in SummaryWriter here), the
    numbers of each logged step become scalars, and a resumed run drops the later events."""
    import types

    from amc.tensorboard_log import TensorBoardLog

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if tensorboard were absent
    with caplog.at_level("INFO", logger="amc.tensorboard_log"):
        board = TensorBoardLog(tmp_path)
    board.log(1, {"loss": 1.0})
    board.close()
    assert board.writer is None and "tensorboard is not installed" in caplog.text
    assert list(tmp_path.iterdir()) == []

    written: list = []

    class Writer:
        def __init__(self, log_dir, purge_step=None):
            written.append(("open", log_dir, purge_step))

        def add_scalar(self, name, value, step):
            written.append((name, value, step))

        def flush(self):
            pass

        def close(self):
            written.append(("close",))

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=Writer))
    (tmp_path / "events.out.tfevents.old").write_text("an earlier run")
    board = TensorBoardLog(tmp_path)  # a fresh start: the earlier run's events go
    assert not (tmp_path / "events.out.tfevents.old").exists()
    board.log(3, {"step": 3, "epoch": 0, "loss": 2.5, "lr": 1e-4, "flag": True, "note": "x"})
    board.close()
    assert written == [("open", str(tmp_path), None), ("loss", 2.5, 3), ("lr", 1e-4, 3), ("close",)]
    written.clear()
    TensorBoardLog(tmp_path, resume_step=40)  # resumed after step 40: events from step 41 on are dropped
    assert written == [("open", str(tmp_path), 41)]


def test_a_finished_checkpoint_carries_its_config_and_vocabulary(tmp_path, ci_data):  # noqa: F811
    """amc evaluate needs neither --model-config nor --vocab for the suite's own checkpoints."""
    from amc.models.tokenizer import load_tokenizer

    config = write_run_config(tmp_path / "amc.yaml", ci_data, optim__max_steps=1, method={"name": "albef_vg"})
    run_amc("train", "--config", config, "--out", tmp_path / "out")
    final = tmp_path / "out" / "checkpoint_final.pt"
    saved = torch.load(final, map_location="cpu", weights_only=True)
    assert saved["vocab"] == load_tokenizer(ci_data.vocab).ids_to_tokens and saved["model_config"]
    common = ["--records", ci_data.flickr_test, "--benchmark", "flickr30k", "--split", "test"]
    common += ["--num-workers", "0", "--limit", "6", "--image-res", "32"]  # the run's resolution
    run_amc("evaluate", "--checkpoint", final, *common, "--out", tmp_path / "bare.json")
    flags = ["--model-config", TINY_MODEL, "--vocab", ci_data.vocab]
    run_amc("evaluate", "--checkpoint", final, *flags, *common, "--out", tmp_path / "flags.json")
    bare, given = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("bare", "flags"))
    assert bare["cases"] == given["cases"] and len(bare["cases"]) == 6


def test_pretrain_refuses_amc_objectives(tmp_path, ci_data):
    config = write_run_config(tmp_path / "bad.yaml", ci_data)
    assert run_cli_code("pretrain", "--config", config, "--out", tmp_path / "out") == 2


def run_cli_code(*argv) -> int:
    from amc.cli import main

    return main([str(a) for a in argv])


@pytest.mark.slow
@pytest.mark.subprocess
def test_a_killed_run_resumes_to_the_same_weights(tmp_path, ci_data):
    config = write_run_config(tmp_path / "run.yaml", ci_data, optim__max_steps=24, save_every_steps=3)
    command = [sys.executable, "-m", "amc", "train", "--config", str(config), "--resume"]

    reference = tmp_path / "uninterrupted"
    subprocess.run([*command, "--out", str(reference)], check=True, env=subprocess_env(), capture_output=True)

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
    killed_at = torch.load(interrupted / "checkpoint_last.pt", map_location="cpu", weights_only=False)["step"]
    assert killed_at < 24

    subprocess.run(
        [*command, "--out", str(interrupted)], check=True, env=subprocess_env(), capture_output=True
    )
    a, b = (
        checkpoint_state(reference / "checkpoint_final.pt"),
        checkpoint_state(interrupted / "checkpoint_final.pt"),
    )
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    steps = [r["step"] for r in read_metrics(interrupted / "metrics.jsonl")]
    assert steps == list(range(1, 25)), "metrics after resume must not repeat or skip steps"


@pytest.mark.subprocess
def test_two_processes_end_with_identical_weights(tmp_path, ci_data):
    config = write_run_config(tmp_path / "run.yaml", ci_data, optim__max_steps=4, optim__batch_size=4)
    torchrun = Path(sys.executable).parent / "torchrun"
    result = subprocess.run(
        [
            str(torchrun),
            "--nproc_per_node",
            "2",
            "--master_port",
            "29731",
            "-m",
            "amc",
            "-v",
            "train",
            "--config",
            str(config),
            "--out",
            str(tmp_path / "ddp"),
        ],
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "weights identical on 2 processes" in result.stderr
    assert (tmp_path / "ddp" / "checkpoint_final.pt").exists()


# --------------------------------------------------------------------------- accumulation and schedule in the loop


def test_the_trainer_follows_the_released_schedule_and_alpha_per_optimiser_step(tmp_path, ci_data):
    """32 pairs, micro-batches of 4, grad_accum 2: 4 optimiser steps per epoch. With one-step stairs
    epoch 0 climbs 1e-4, 1e-4, 4e-4, 7e-4 (stair 3 = lr would come at step 4); epochs 1 and 2 sit on
    the cosine; alpha ramps over the 4 steps of epoch 0, the same for both micro-batches of a step."""
    records = records_subset(ci_data, 32, tmp_path / "vg-32.jsonl")
    config = write_run_config(tmp_path / "released.yaml", ci_data, data__path=str(records), optim__epochs=3)
    run_amc(
        "train", "--config", config, "--out", tmp_path / "out", "optim.schedule=released",
        "optim.lr=1e-3", "optim.min_lr=1e-4", "optim.warmup_lr=1e-4", "optim.warmup_stairs=3",
        "optim.stair_steps=1", "optim.grad_accum=2", "optim.batch_size=4",
    )  # fmt: skip
    rows = read_metrics(tmp_path / "out" / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, 13))
    cosine = [1e-4 + 4.5e-4 * (1 + math.cos(math.pi * e / 3)) for e in (1, 2)]
    expected_lr = [1e-4, 1e-4, 4e-4, 7e-4] + [cosine[0]] * 4 + [cosine[1]] * 4
    assert [r["lr"] for r in rows] == pytest.approx(expected_lr, rel=1e-9)
    assert [r["alpha"] for r in rows] == pytest.approx([0.0, 0.1, 0.2, 0.3] + [0.4] * 8)
    assert [r["epoch"] for r in rows] == [0] * 4 + [1] * 4 + [2] * 4


def _perturbed_start(path: Path) -> dict[str, torch.Tensor]:
    """A tiny model whose momentum copies differ from the online weights, saved as a start checkpoint."""
    from amc.models.albef import ALBEF
    from amc.models.checkpoint import save_checkpoint
    from amc.models.config import ModelConfig

    torch.manual_seed(5)
    model = ALBEF(ModelConfig.from_file(TINY_MODEL).replace(image_res=32))  # the runs' resolution
    with torch.no_grad():
        for _, momentum in model.model_pairs:
            for param in momentum.parameters():
                param.add_(torch.randn_like(param) * 0.1)
    save_checkpoint(path, model)
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_accumulation_updates_the_momentum_model_once_per_optimiser_step(tmp_path, ci_data):
    start = _perturbed_start(tmp_path / "start.pt")
    config = write_run_config(tmp_path / "run.yaml", ci_data, init_checkpoint=str(tmp_path / "start.pt"))
    run_amc("train", "--config", config, "--out", tmp_path / "out", "optim.grad_accum=2", "optim.max_steps=1")
    final = checkpoint_state(tmp_path / "out" / "checkpoint_final.pt")
    pairs = [("visual_encoder.", "visual_encoder_m."), ("vision_proj.", "vision_proj_m."),
             ("text_encoder.", "text_encoder_m."), ("text_proj.", "text_proj_m.")]  # fmt: skip
    checked = 0
    for online, momentum in pairs:
        for key in [k for k in start if k.startswith(momentum) and start[k].is_floating_point()]:
            online_key = online + key[len(momentum) :]
            expected = 0.995 * start[key] + 0.005 * start[online_key]  # one update, before the step
            torch.testing.assert_close(final[key], expected, rtol=0, atol=1e-6, msg=key)
            checked += 1
    assert checked > 20
    # The 2 x 8 momentum features of the step went in once, at the start of the queue.
    assert int(final["queue_ptr"]) == 16
    assert torch.equal(final["image_queue"][:, 16:], start["image_queue"][:, 16:])
    assert not torch.isclose(final["image_queue"][:, :16], start["image_queue"][:, :16]).any()


@pytest.mark.slow
@pytest.mark.subprocess
def test_accumulation_equals_two_processes(tmp_path, ci_data):
    """grad_accum 2 on one process = 2 gloo processes (the released 2-GPU run): the same samples,
    random draws, momentum update, queue and gradient (a mean over 64 = the mean of two means over 32)."""
    config = write_run_config(tmp_path / "run.yaml", ci_data, optim__max_steps=3, optim__batch_size=32)
    command = [sys.executable, "-m", "amc", "train", "--config", str(config)]
    subprocess.run(
        [*command, "--out", str(tmp_path / "accum"), "optim.grad_accum=2"],
        check=True, env=subprocess_env(), capture_output=True, timeout=300,
    )  # fmt: skip
    torchrun = Path(sys.executable).parent / "torchrun"
    ddp = subprocess.run(
        [str(torchrun), "--nproc_per_node", "2", "--master_port", "29733", "-m", "amc", "train",
         "--config", str(config), "--out", str(tmp_path / "ddp")],
        env=subprocess_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    a, b = (
        checkpoint_state(tmp_path / "accum" / "checkpoint_final.pt"),
        checkpoint_state(tmp_path / "ddp" / "checkpoint_final.pt"),
    )
    assert a.keys() == b.keys()
    assert int(a["queue_ptr"]) == int(b["queue_ptr"]) == 3 * 64
    for key in a:
        # Bit-identical on the CPU (halving is exact); the tolerance leaves room for other reductions.
        torch.testing.assert_close(a[key], b[key], rtol=1e-6, atol=1e-7, msg=key)


# --------------------------------------------------------------------------- model selection


@pytest.mark.slow
def test_selection_keeps_the_best_epoch_per_benchmark_on_its_split(tmp_path, ci_data):
    """Every epoch end is evaluated on each selection split; the best checkpoint of each split is
    the one `amc evaluate` scores highest (the same protocol, the same number)."""
    records = records_subset(ci_data, 32, tmp_path / "vg-small.jsonl")
    splits = [
        {"name": "flickr30k", "records": str(ci_data.flickr_test)},
        {"name": "refcoco+", "records": str(ci_data.refcoco_testA), "image_res": 64},
    ]
    config = write_run_config(
        tmp_path / "select.yaml",
        ci_data,
        data__path=str(records),
        optim__epochs=3,
        selection={"splits": splits},
    )
    run_amc("train", "--config", config, "--out", tmp_path / "out", "optim.lr=3e-3")
    selection = [json.loads(line) for line in (tmp_path / "out" / "selection.jsonl").read_text().splitlines()]
    assert [(r["epoch"], r["step"], r["split"]) for r in selection] == [
        (epoch, 4 * (epoch + 1), name) for epoch in range(3) for name in ("flickr30k", "refcoco+")
    ]
    for split in splits:
        name = split["name"]
        mine = [r for r in selection if r["split"] == name]
        best = max(mine, key=lambda r: r["accuracy"])  # the first maximum: ties keep the earlier epoch
        path = tmp_path / "out" / f"checkpoint_best_{name}.pt"
        saved = torch.load(path, map_location="cpu", weights_only=False)
        assert saved["step"] == best["step"] and saved["epoch"] == best["epoch"]
        out = tmp_path / f"eval-{name}.json"
        benchmark_args = ["--benchmark", name, "--split", "x", "--image-res", str(split.get("image_res", 32))]
        run_amc(
            "evaluate", "--checkpoint", path, "--model-config", TINY_MODEL, "--vocab", ci_data.vocab,
            "--records", split["records"], *benchmark_args, "--num-workers", "0", "--out", out,
        )  # fmt: skip
        assert json.loads(out.read_text())["summary"]["accuracy"] == pytest.approx(
            best["accuracy"], abs=1e-12
        )


def test_selection_log_is_trimmed_to_the_resumed_step(tmp_path, ci_data):
    from amc.models.tokenizer import load_tokenizer
    from amc.selection import BestCheckpoints, parse_selection

    splits = parse_selection({"splits": [{"name": "flickr30k", "records": str(ci_data.flickr_test)}]})
    selector = BestCheckpoints(tmp_path, splits, load_tokenizer(ci_data.vocab), torch.device("cpu"), 0)
    rows = [
        {"epoch": 0, "step": 4, "split": "flickr30k", "accuracy": 0.2, "best": True},
        {"epoch": 1, "step": 8, "split": "flickr30k", "accuracy": 0.5, "best": True},
    ]
    selector.log_path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    selector.restore(resumed_step=4)  # the best checkpoint itself is gone: that split starts over
    assert selector.rows() == rows[:1] and selector.best == {}
    selector.work_dir.mkdir()
    selector.work_path("flickr30k").write_bytes(b"")
    selector.restore(resumed_step=4)
    assert selector.rows() == rows[:1] and selector.best == {"flickr30k": 0.2}
    with pytest.raises(AmcError, match="selection.splits entry 1 needs name and records"):
        parse_selection({"splits": [{"name": "flickr30k", "path": "x"}]})


# --------------------------------------------------------------------------- wiring found by mutation


def test_replaced_images_are_counted_and_summed_over_processes(monkeypatch):
    import amc.train
    from amc.train import Processes, _images_replaced

    one = Processes(rank=0, world_size=1, device=torch.device("cpu"))
    assert _images_replaced({"images_replaced": torch.tensor(3)}, one) == 3
    assert _images_replaced({}, one) == 0

    reduced = []

    def all_reduce(tensor):  # two processes: the other one replaced 5
        reduced.append(int(tensor))
        tensor += 5

    monkeypatch.setattr(amc.train.dist, "all_reduce", all_reduce)
    two = Processes(rank=1, world_size=2, device=torch.device("cpu"))
    assert _images_replaced({"images_replaced": torch.tensor(3)}, two) == 8 and reduced == [3]


def test_the_logged_memory_is_this_process_peak_resident_size_in_mib():
    from amc.train import _memory_mb

    def peak_kib() -> int:  # the kernel's own account of this process's peak resident size
        status = Path("/proc/self/status").read_text().splitlines()
        return int(next(line.split()[1] for line in status if line.startswith("VmHWM:")))

    assert _memory_mb(torch.device("cpu")) == pytest.approx(peak_kib() / 1024, rel=0.01)


def test_pretrain_runs_the_albef_objectives_and_writes_metrics_where_asked(tmp_path, ci_data):
    config = write_run_config(
        tmp_path / "pretrain.yaml",
        ci_data,
        data__kind="captions",
        data__path=str(ci_data.captions),
        method={"name": "pretrain", "objectives": PRETRAIN_OBJECTIVES},
        optim__max_steps=1,
        optim__batch_size=4,
    )
    metrics = tmp_path / "logs" / "pretrain" / "metrics.jsonl"  # in folders that do not exist yet
    out = tmp_path / "runs" / "pretrain"  # --out's parent does not exist either
    assert run_cli_code("pretrain", "--config", config, "--out", out, "--metrics", metrics) == 0
    assert [row["step"] for row in read_metrics(metrics)] == [1]
    assert not (out / "metrics.jsonl").exists()
    assert (out / "checkpoint_final.pt").is_file()


def test_a_best_checkpoint_records_the_step_epoch_and_method_it_was_selected_at(tmp_path, ci_data):
    """In process: two epochs of two steps, selection on a RefCOCO+ split at each epoch's end."""
    records = records_subset(ci_data, 8, tmp_path / "vg-8.jsonl")
    splits = [{"name": "refcoco+", "records": str(ci_data.refcoco_testA)}]
    config = write_run_config(
        tmp_path / "select.yaml", ci_data, data__path=str(records), optim__epochs=2, optim__batch_size=4,
        method={"name": "albef_vg"}, selection={"splits": splits},
    )  # fmt: skip
    run_amc("train", "--config", config, "--out", tmp_path / "out")
    rows = [json.loads(line) for line in (tmp_path / "out" / "selection.jsonl").read_text().splitlines()]
    assert [(r["epoch"], r["step"]) for r in rows] == [(0, 2), (1, 4)]
    best = [r for r in rows if r["best"]][-1]
    saved = torch.load(
        tmp_path / "out" / "checkpoint_best_refcoco+.pt", map_location="cpu", weights_only=False
    )
    assert (saved["step"], saved["epoch"], saved["method"]) == (best["step"], best["epoch"], "albef_vg")
    final, last = (
        torch.load(tmp_path / "out" / f"checkpoint_{name}.pt", map_location="cpu", weights_only=False)
        for name in ("final", "last")
    )
    assert (final["step"], final["epoch"]) == (4, 1)  # the epoch of the last step
    assert (last["step"], last["epoch"], last["batch_in_epoch"]) == (4, 2, 0)  # one at every epoch's end


class _RecordedBoard:
    """A stand-in for amc.tensorboard_log.TensorBoardLog that records what the loop gives it."""

    made: list = []
    logged: list = []  # the values of every log call, of every board

    def __init__(self, log_dir, resume_step=None):
        self.steps: list[int] = []
        _RecordedBoard.made.append((Path(log_dir), resume_step, self.steps))

    def log(self, step, values):
        self.steps.append(step)
        _RecordedBoard.logged.append(values)

    def close(self):
        self.steps.append("closed")


def test_the_loop_seeds_counts_and_reports_each_micro_batch(tmp_path, ci_data, monkeypatch, capsys):
    """Two optimiser steps per epoch of two micro-batches of 2, three steps: which seeds, epochs,
    counts, rates and reports reach each micro-batch and each logged step."""
    import amc.train

    seeds, generator_seeds, dataset_epochs, step_lrs = [], [], [], []
    real_seed, real_forward = amc.train.step_seed, amc.train.TrainingStep.forward
    real_build, real_optimizer = amc.train.build_dataset, amc.train.build_optimizer

    def recording_seed(seed, step, virtual_rank):
        seeds.append((step, virtual_rank))
        return real_seed(seed, step, virtual_rank)

    def recording_forward(self, batch, alpha, generator):
        generator_seeds.append(generator.initial_seed())
        return real_forward(self, batch, alpha, generator)

    def recording_build(config):
        dataset = real_build(config)
        real_set_epoch = dataset.set_epoch
        dataset.set_epoch = lambda epoch: dataset_epochs.append(epoch) or real_set_epoch(epoch)
        return dataset

    def recording_optimizer(model, optim, device):
        optimizer = real_optimizer(model, optim, device)
        real_step = optimizer.step
        optimizer.step = lambda: step_lrs.append([g["lr"] for g in optimizer.param_groups]) or real_step()
        return optimizer

    clock = iter(range(0, 2_000_000, 2))  # every reading of the clock two seconds later
    monkeypatch.setattr(amc.train, "step_seed", recording_seed)
    monkeypatch.setattr(amc.train.TrainingStep, "forward", recording_forward)
    monkeypatch.setattr(amc.train, "build_dataset", recording_build)
    monkeypatch.setattr(amc.train, "build_optimizer", recording_optimizer)
    monkeypatch.setattr(amc.train, "_images_replaced", lambda raw, procs: 1)
    monkeypatch.setattr(
        amc.train, "time", type("Clock", (), {"perf_counter": staticmethod(lambda: float(next(clock)))})
    )
    monkeypatch.setattr(amc.train, "TensorBoardLog", _RecordedBoard)
    _RecordedBoard.made, _RecordedBoard.logged = [], []

    records = records_subset(ci_data, 8, tmp_path / "vg-8.jsonl")
    config = write_run_config(tmp_path / "run.yaml", ci_data, data__path=str(records))
    overrides = ["data.image_res=32", "data.mask_size=16", "optim.batch_size=2", "optim.grad_accum=2",
                 "optim.max_steps=3", "optim.epochs=5", "log_every=3", "seed=5", "method.name=albef_vg"]  # fmt: skip
    run_config = load_run_config(str(config), overrides)
    amc.train.train(run_config, tmp_path / "out")

    micro_batches = [(step, rank) for step in range(3) for rank in (0, 1)]
    assert list(dict.fromkeys(seeds)) == micro_batches  # virtual rank = position within the step
    assert generator_seeds == [real_seed(5, step, rank) + 1 for step, rank in micro_batches]
    assert dataset_epochs == [0, 1]  # 8 pairs / (2 x 2) = 2 steps per epoch
    assert step_lrs == [[lr_at(step, 2, 3, run_config.optim)] * 2 for step in range(3)]  # both groups
    rows = read_metrics(tmp_path / "out" / "metrics.jsonl")
    assert [r["images_replaced"] for r in rows] == [2, 6]  # counted over the run, per micro-batch
    # global batches of 4 since the last log (one step, then two), in two seconds
    assert [r["pairs_per_s"] for r in rows] == [2.0, 4.0]
    assert _RecordedBoard.made == [(tmp_path / "out", None, [1, 3, "closed"])]  # beside metrics.jsonl
    assert _RecordedBoard.logged == rows  # TensorBoard gets what metrics.jsonl gets
    err = capsys.readouterr().err  # the progress bar: the method, the steps, the loss and the rate
    assert "train albef_vg" in err and "3/3" in err and re.search(r"loss=\d+\.\d{3}, pairs_s=4\b", err)


def test_a_run_interrupted_mid_epoch_resumes_to_the_same_weights_in_process(
    tmp_path, ci_data, monkeypatch, capsys
):
    """Interrupted after the checkpoint of step 3 of an epoch of 4, then resumed: the same weights,
    log, replaced-image count and TensorBoard steps as the run that was not interrupted."""
    import amc.train

    monkeypatch.setattr(amc.train, "_images_replaced", lambda raw, procs: 1)
    monkeypatch.setattr(amc.train, "TensorBoardLog", _RecordedBoard)
    _RecordedBoard.made, _RecordedBoard.logged = [], []
    records = records_subset(ci_data, 8, tmp_path / "vg-8.jsonl")
    config = load_run_config(
        str(write_run_config(tmp_path / "run.yaml", ci_data, data__path=str(records))),
        ["data.image_res=32", "data.mask_size=16", "optim.batch_size=2", "optim.max_steps=7",
         "optim.epochs=5", "save_every_steps=3", "log_every=2", "method.name=albef_vg"],
    )  # fmt: skip
    amc.train.train(config, tmp_path / "whole")

    real_save_last = amc.train.Run.save_last

    def save_then_stop(self, next_epoch, next_batch):
        real_save_last(self, next_epoch, next_batch)
        raise KeyboardInterrupt

    monkeypatch.setattr(amc.train.Run, "save_last", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        amc.train.train(config, tmp_path / "resumed")
    saved = torch.load(tmp_path / "resumed" / "checkpoint_last.pt", map_location="cpu", weights_only=False)
    assert (saved["step"], saved["epoch"], saved["batch_in_epoch"], saved["images_replaced"]) == (3, 0, 3, 3)
    monkeypatch.setattr(amc.train.Run, "save_last", real_save_last)
    capsys.readouterr()
    assert amc.train.train(config, tmp_path / "resumed", resume=True).steps == 7
    assert "7/7" in capsys.readouterr().err  # the progress bar goes on from step 3

    # Stopped one micro-batch before the end of epoch 1: the last epoch checkpoint stays that of step 6.
    last = torch.load(tmp_path / "whole" / "checkpoint_last.pt", map_location="cpu", weights_only=False)
    assert (last["step"], last["epoch"], last["batch_in_epoch"]) == (6, 1, 2)
    whole, resumed = (
        checkpoint_state(tmp_path / name / "checkpoint_final.pt") for name in ("whole", "resumed")
    )
    assert all(torch.equal(whole[key], resumed[key]) for key in whole)
    drop_rate = [{k: v for k, v in r.items() if k not in ("pairs_per_s", "max_memory_mb")} for r in
                 read_metrics(tmp_path / "whole" / "metrics.jsonl")]  # fmt: skip
    assert [{k: v for k, v in r.items() if k not in ("pairs_per_s", "max_memory_mb")} for r in
            read_metrics(tmp_path / "resumed" / "metrics.jsonl")] == drop_rate  # fmt: skip
    assert [r["step"] for r in drop_rate] == [1, 2, 4, 6, 7] and drop_rate[-1]["images_replaced"] == 7
    boards = [(path.name, start, steps) for path, start, steps in _RecordedBoard.made]
    assert boards == [
        ("whole", None, [1, 2, 4, 6, 7, "closed"]),
        ("resumed", None, [1, 2]),  # interrupted after step 3
        ("resumed", 3, [4, 6, 7, "closed"]),
    ]


def test_an_override_value_may_contain_the_equals_sign():
    config = load_run_config(None, ["model_config=m.yaml", "vocab=v", "data.path=runs/a=b.jsonl"])
    assert config.data.path == "runs/a=b.jsonl"


def test_selection_splits_are_checked_when_the_configuration_is_loaded():
    base = ["model_config=m.yaml", "vocab=v", "data.path=d.jsonl"]
    twice = "selection.splits=[{name: flickr30k, records: a.jsonl}, {name: flickr30k, records: b.jsonl}]"
    with pytest.raises(AmcError, match="selection.splits names repeat"):
        load_run_config(None, [*base, twice])
    for bad in ("selection=3", "selection.splits=[3]", "selection.splits=3"):
        with pytest.raises(AmcError, match="selection"):
            load_run_config(None, [*base, bad])
    # A stored configuration with such a selection (a damaged config.resolved.yaml) is another run.
    config = load_run_config(None, base)
    for stored in ({"selection": 3}, {"selection": {"splits": [3]}}, {"selection": {"splits": 3}}):
        assert not config.matches({**config.to_dict(), **stored})


def test_a_baseline_objective_is_set_up_with_the_model_and_the_loader_gets_its_workers(
    tmp_path, ci_data, monkeypatch
):
    """One step with the VMRM-style contrastive objective (named by its class), in process: the
    trainer hands it the model before training; ``num_workers`` reaches the data loader."""
    import amc.train

    loaders = []
    real_loader = amc.train.torch.utils.data.DataLoader

    def recording_loader(*args, **kwargs):
        loaders.append(kwargs)
        return real_loader(*args, **kwargs)

    monkeypatch.setattr(amc.train.torch.utils.data, "DataLoader", recording_loader)
    records = records_subset(ci_data, 8, tmp_path / "vg-8.jsonl")
    config = write_run_config(tmp_path / "run.yaml", ci_data, data__path=str(records))
    overrides = ["data.image_res=32", "data.mask_size=16", "optim.batch_size=4", "optim.max_steps=1",
                 "num_workers=1", 'method.objectives={"itc": {}}',
                 "method.objectives.vmrm_contrastive.class=baselines.vmrm_style:VmrmContrastive"]  # fmt: skip
    amc.train.train(load_run_config(str(config), overrides), tmp_path / "out")
    assert [kwargs["num_workers"] for kwargs in loaders] == [1]
    assert {"loss_itc", "loss_vmrm_contrastive"} <= set(read_metrics(tmp_path / "out" / "metrics.jsonl")[0])


def test_the_init_checkpoint_is_loaded_into_the_runs_model_and_must_hold_what_training_reads(
    tmp_path, ci_data, random_checkpoint
):
    """Fine-tuning starts from ``init_checkpoint`` in the run's model configuration (at
    ``data.image_res``, the position embeddings resized from the checkpoint's 96 px); a checkpoint
    without what training reads (here the ITC queues, which evaluation may lack) is refused."""
    import amc.train

    records = records_subset(ci_data, 4, tmp_path / "vg-4.jsonl")
    path = write_run_config(tmp_path / "run.yaml", ci_data, data__path=str(records))
    overrides = ["data.image_res=32", "optim.batch_size=4", "optim.max_steps=1", "optim.warmup_steps=0"]
    config = load_run_config(str(path), [*overrides, f"init_checkpoint={random_checkpoint}"])
    assert amc.train.train(config, tmp_path / "out").steps == 1
    weights = checkpoint_state(tmp_path / "out" / "checkpoint_final.pt")
    assert weights["visual_encoder.pos_embed"].shape[1] == 1 + 4 * 4
    start = torch.load(random_checkpoint, map_location="cpu", weights_only=False)
    del start["model"]["image_queue"]
    torch.save(start, tmp_path / "no-queue.pt")
    config = load_run_config(str(path), [*overrides, f"init_checkpoint={tmp_path / 'no-queue.pt'}"])
    with pytest.raises(AmcError, match="image_queue"):
        amc.train.train(config, tmp_path / "again")


@pytest.mark.parametrize(("terminal", "interval"), [(True, 1.0), (False, 10.0)])
def test_the_progress_bar_counts_steps_from_the_resumed_one(monkeypatch, terminal, interval):
    """One line a second on a terminal; in a log file (Slurm's), one every ten seconds."""
    import tqdm

    import amc.train

    made = []
    monkeypatch.setattr(tqdm, "tqdm", lambda **kwargs: made.append(kwargs))
    monkeypatch.setattr(amc.train.os, "isatty", lambda fd: terminal and fd == 2)
    amc.train._progress_bar(True, total=10, initial=3, name="amc")
    amc.train._progress_bar(False, total=10, initial=0, name="amc")
    common = {
        "total": 10,
        "desc": "train amc",
        "unit": "step",
        "mininterval": interval,
        "dynamic_ncols": True,
    }
    assert made == [{**common, "initial": 3, "disable": False}, {**common, "initial": 0, "disable": True}]
