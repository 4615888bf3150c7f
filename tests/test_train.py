"""The training engine: configuration, a loss that goes down, exact resume after a kill, two processes."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import math
import os
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
from amc.train import alpha_at, build_optimizer, load_run_config, lr_at, numerics
from tests.engine_fixtures import REPO, TINY_MODEL, ci_data, run_amc  # noqa: F401

PRETRAIN_OBJECTIVES = {
    "itc": {"weight": 1.0},
    "itm": {"weight": 1.0},
    "mlm": {"weight": 1.0, "probability": 0.15},
}


def _write_config(path: Path, data, **changes) -> Path:
    config = {
        "model_config": str(TINY_MODEL),
        "vocab": str(data.vocab),
        "data": {"kind": "records", "path": str(data.vg_train), "image_res": 96, "mask_size": 96},
        # The per-step cosine: these runs are a few steps long (the released schedule is tested below).
        "optim": {
            "lr": 1e-3,
            "min_lr": 1e-4,
            "schedule": "cosine",
            "warmup_steps": 2,
            "epochs": 50,
            "batch_size": 8,
        },
        "num_workers": 0,
        "log_every": 1,
    }
    for dotted, value in changes.items():
        node = config
        *parents, last = dotted.split("__")
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value
    path.write_text(yaml.safe_dump(config))
    return path


def _metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# --------------------------------------------------------------------------- configuration


def test_overrides_parse_yaml_values_and_reject_unknown_keys(tmp_path):
    base = ["model_config=m.yaml", "vocab=v", "data.path=r.jsonl"]
    config = load_run_config(
        None, [*base, "optim.epochs=3", "method.objectives.amc.delta_max=0.25", "optim.lr=3e-5"]
    )
    assert config["optim"]["epochs"] == 3
    assert config["optim"]["lr"] == 3e-5  # YAML 1.1 alone would read "3e-5" as a string
    assert config["method"]["objectives"]["amc"]["delta_max"] == 0.25
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
    assert set(config["method"]["objectives"]) == {"itc", "itm", "mlm"}


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

    def lr(s):
        return lr_at(s, per_epoch, total, RELEASED)

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
    lrs = [lr_at(s, 250, 750, optim) for s in range(750)]
    assert lrs == pytest.approx(released_loop_lrs(250, optim), rel=1e-12)
    stair = (1e-5 - 1e-6) / 20
    assert sorted(set(lrs[:250])) == pytest.approx([1e-6, 1e-6 + stair, 1e-6 + 2 * stair])
    assert lrs[250:500] == pytest.approx([1e-6 + 4.5e-6 * (1 + math.cos(math.pi / 3))] * 250)
    assert lrs[500:] == pytest.approx([1e-6 + 4.5e-6 * (1 + math.cos(2 * math.pi / 3))] * 250)


def test_released_schedule_without_warm_up_starts_at_lr():
    optim = {**RELEASED, "warmup_stairs": 0, "epochs": 4}
    assert [lr_at(s, 10, 40, optim) for s in range(40)] == pytest.approx(released_loop_lrs(10, optim))
    assert lr_at(0, 10, 40, optim) == 1e-5


def test_cosine_schedule_warms_up_then_decays_to_min_lr():
    optim = {"schedule": "cosine", "lr": 1.0, "min_lr": 0.1, "warmup_steps": 4}
    assert lr_at(0, 7, 100, optim) == pytest.approx(0.25)
    assert lr_at(3, 7, 100, optim) == pytest.approx(1.0)
    assert lr_at(100, 7, 100, optim) == pytest.approx(0.1)
    values = [lr_at(s, 7, 100, optim) for s in range(4, 101)]
    assert all(a >= b for a, b in zip(values, values[1:], strict=False))


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
    optimizer = build_optimizer(model, {"lr": 1e-5, "weight_decay": 0.02}, torch.device("cpu"))
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
    assert config["precision"] == "tf32"
    assert {k: config["optim"][k] for k in RELEASED if k != "warmup_steps"} == {
        k: v for k, v in RELEASED.items() if k != "warmup_steps"
    }
    defaults = load_run_config(None, base)
    assert defaults["precision"] == "tf32" and defaults["optim"]["schedule"] == "released"
    with pytest.raises(AmcError, match=r"precision=auto\): precision: 'auto' is not one of"):
        load_run_config(None, [*base, "precision=auto"])
    with pytest.raises(AmcError, match=r"optim.schedule: 'linear' is not one of"):
        load_run_config(None, [*base, "optim.schedule=linear"])


# --------------------------------------------------------------------------- training runs


def test_pretraining_lowers_the_loss(tmp_path, ci_data):  # noqa: F811
    config = _write_config(
        tmp_path / "pretrain.yaml",
        ci_data,
        data__kind="captions",
        data__path=str(ci_data.captions),
        method={"name": "pretrain", "objectives": PRETRAIN_OBJECTIVES},
        optim__max_steps=40,
        optim__batch_size=16,
    )
    run_amc("pretrain", "--config", config, "--out", tmp_path / "out")
    rows = _metrics(tmp_path / "out" / "metrics.jsonl")
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


def test_amc_finetuning_logs_its_terms(tmp_path, ci_data):  # noqa: F811
    config = _write_config(tmp_path / "amc.yaml", ci_data, optim__max_steps=3)
    run_amc(
        "train", "--config", config, "--out", tmp_path / "out", "method.objectives.amc.per_sample_mean=true"
    )
    rows = _metrics(tmp_path / "out" / "metrics.jsonl")
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

    config = _write_config(tmp_path / "amc.yaml", ci_data, optim__max_steps=1, method={"name": "albef_vg"})
    run_amc("train", "--config", config, "--out", tmp_path / "out")
    final = tmp_path / "out" / "checkpoint_final.pt"
    saved = torch.load(final, map_location="cpu", weights_only=True)
    assert saved["vocab"] == load_tokenizer(ci_data.vocab).ids_to_tokens and saved["model_config"]
    common = ["--records", ci_data.flickr_test, "--benchmark", "flickr30k", "--split", "test"]
    common += ["--num-workers", "0", "--limit", "6"]
    run_amc("evaluate", "--checkpoint", final, *common, "--out", tmp_path / "bare.json")
    flags = ["--model-config", TINY_MODEL, "--vocab", ci_data.vocab]
    run_amc("evaluate", "--checkpoint", final, *flags, *common, "--out", tmp_path / "flags.json")
    bare, given = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("bare", "flags"))
    assert bare["cases"] == given["cases"] and len(bare["cases"]) == 6


def test_pretrain_refuses_amc_objectives(tmp_path, ci_data):  # noqa: F811
    config = _write_config(tmp_path / "bad.yaml", ci_data)
    assert run_cli_code("pretrain", "--config", config, "--out", tmp_path / "out") == 2


def run_cli_code(*argv) -> int:
    from amc.cli import main

    return main([str(a) for a in argv])


def _env() -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    env.pop("WORLD_SIZE", None)
    return env


def _state(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)["model"]


def test_a_killed_run_resumes_to_the_same_weights(tmp_path, ci_data):  # noqa: F811
    config = _write_config(tmp_path / "run.yaml", ci_data, optim__max_steps=24, save_every_steps=3)
    command = [sys.executable, "-m", "amc", "train", "--config", str(config), "--resume"]

    reference = tmp_path / "uninterrupted"
    subprocess.run([*command, "--out", str(reference)], check=True, env=_env(), capture_output=True)

    interrupted = tmp_path / "interrupted"
    process = subprocess.Popen([*command, "--out", str(interrupted)], env=_env(), stderr=subprocess.DEVNULL)
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

    subprocess.run([*command, "--out", str(interrupted)], check=True, env=_env(), capture_output=True)
    a, b = _state(reference / "checkpoint_final.pt"), _state(interrupted / "checkpoint_final.pt")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    steps = [r["step"] for r in _metrics(interrupted / "metrics.jsonl")]
    assert steps == list(range(1, 25)), "metrics after resume must not repeat or skip steps"


def test_two_processes_end_with_identical_weights(tmp_path, ci_data):  # noqa: F811
    config = _write_config(tmp_path / "run.yaml", ci_data, optim__max_steps=4, optim__batch_size=4)
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
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "weights identical on 2 processes" in result.stderr
    assert (tmp_path / "ddp" / "checkpoint_final.pt").exists()


# --------------------------------------------------------------------------- accumulation and schedule in the loop


def _records_subset(ci_data, count: int, path: Path) -> Path:  # noqa: F811
    """The first ``count`` VG training records, with absolute image paths, as a records file."""
    image_root = Path(ci_data.vg_train).parent
    fixed = []
    for line in Path(ci_data.vg_train).read_text().splitlines()[:count]:
        row = json.loads(line)
        row["image"] = str((image_root / row["image"]).resolve())
        fixed.append(json.dumps(row))
    path.write_text("\n".join(fixed) + "\n")
    return path


def test_the_trainer_follows_the_released_schedule_and_alpha_per_optimiser_step(tmp_path, ci_data):  # noqa: F811
    """64 pairs, micro-batches of 8, grad_accum 2: 4 optimiser steps per epoch. With one-step stairs
    epoch 0 climbs 1e-4, 1e-4, 4e-4, 7e-4 (stair 3 = lr would come at step 4); epochs 1 and 2 sit on
    the cosine; alpha ramps over the 4 steps of epoch 0, the same for both micro-batches of a step."""
    records = _records_subset(ci_data, 64, tmp_path / "vg-64.jsonl")
    config = _write_config(tmp_path / "released.yaml", ci_data, data__path=str(records), optim__epochs=3)
    run_amc(
        "train", "--config", config, "--out", tmp_path / "out", "optim.schedule=released",
        "optim.lr=1e-3", "optim.min_lr=1e-4", "optim.warmup_lr=1e-4", "optim.warmup_stairs=3",
        "optim.stair_steps=1", "optim.grad_accum=2",
    )  # fmt: skip
    rows = _metrics(tmp_path / "out" / "metrics.jsonl")
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
    model = ALBEF(ModelConfig.from_file(TINY_MODEL))
    with torch.no_grad():
        for _, momentum in model.model_pairs:
            for param in momentum.parameters():
                param.add_(torch.randn_like(param) * 0.1)
    save_checkpoint(path, model)
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_accumulation_updates_the_momentum_model_once_per_optimiser_step(tmp_path, ci_data):  # noqa: F811
    start = _perturbed_start(tmp_path / "start.pt")
    config = _write_config(tmp_path / "run.yaml", ci_data, init_checkpoint=str(tmp_path / "start.pt"))
    run_amc("train", "--config", config, "--out", tmp_path / "out", "optim.grad_accum=2", "optim.max_steps=1")
    final = _state(tmp_path / "out" / "checkpoint_final.pt")
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


def test_accumulation_equals_two_processes(tmp_path, ci_data):  # noqa: F811
    """grad_accum 2 on one process = 2 gloo processes (the released 2-GPU run): the same samples,
    random draws, momentum update, queue and gradient (a mean over 64 = the mean of two means over 32)."""
    config = _write_config(tmp_path / "run.yaml", ci_data, optim__max_steps=3, optim__batch_size=32)
    command = [sys.executable, "-m", "amc", "train", "--config", str(config)]
    subprocess.run(
        [*command, "--out", str(tmp_path / "accum"), "optim.grad_accum=2"],
        check=True, env=_env(), capture_output=True, timeout=300,
    )  # fmt: skip
    torchrun = Path(sys.executable).parent / "torchrun"
    ddp = subprocess.run(
        [str(torchrun), "--nproc_per_node", "2", "--master_port", "29733", "-m", "amc", "train",
         "--config", str(config), "--out", str(tmp_path / "ddp")],
        env=_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    a, b = (
        _state(tmp_path / "accum" / "checkpoint_final.pt"),
        _state(tmp_path / "ddp" / "checkpoint_final.pt"),
    )
    assert a.keys() == b.keys()
    assert int(a["queue_ptr"]) == int(b["queue_ptr"]) == 3 * 64
    for key in a:
        # Bit-identical on the CPU (halving is exact); the tolerance leaves room for other reductions.
        torch.testing.assert_close(a[key], b[key], rtol=1e-6, atol=1e-7, msg=key)


# --------------------------------------------------------------------------- model selection


def test_selection_keeps_the_best_epoch_per_benchmark_on_its_split(tmp_path, ci_data):  # noqa: F811
    """Every epoch end is evaluated on each selection split; the best checkpoint of each split is
    the one `amc evaluate` scores highest (the same protocol, the same number)."""
    records = _records_subset(ci_data, 32, tmp_path / "vg-small.jsonl")
    splits = [
        {"name": "flickr30k", "records": str(ci_data.flickr_test)},
        {"name": "refcoco+", "records": str(ci_data.refcoco_testA), "image_res": 64},
    ]
    config = _write_config(
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
        benchmark_args = ["--benchmark", name, "--split", "x", "--image-res", str(split.get("image_res", 96))]
        run_amc(
            "evaluate", "--checkpoint", path, "--model-config", TINY_MODEL, "--vocab", ci_data.vocab,
            "--records", split["records"], *benchmark_args, "--num-workers", "0", "--out", out,
        )  # fmt: skip
        assert json.loads(out.read_text())["summary"]["accuracy"] == pytest.approx(
            best["accuracy"], abs=1e-12
        )


def test_selection_log_is_trimmed_to_the_resumed_step(tmp_path, ci_data):  # noqa: F811
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
