"""The training engine: configuration, a loss that goes down, exact resume after a kill, two processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from amc.io import AmcError
from amc.train import load_run_config, lr_at
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
        "optim": {"lr": 1e-3, "min_lr": 1e-4, "warmup_steps": 2, "epochs": 50, "batch_size": 8},
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


def test_schedule_warms_up_then_decays_to_min_lr():
    optim = {"lr": 1.0, "min_lr": 0.1, "warmup_steps": 4}
    assert lr_at(0, 100, optim) == pytest.approx(0.25)
    assert lr_at(3, 100, optim) == pytest.approx(1.0)
    assert lr_at(100, 100, optim) == pytest.approx(0.1)
    values = [lr_at(s, 100, optim) for s in range(4, 101)]
    assert all(a >= b for a, b in zip(values, values[1:], strict=False))


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


# --------------------------------------------------------------------------- model selection


def test_selection_keeps_the_best_epoch_per_benchmark_on_its_split(tmp_path, ci_data):  # noqa: F811
    """Every epoch end is evaluated on each selection split; the best checkpoint of each split is
    the one `amc evaluate` scores highest (the same protocol, the same number)."""
    rows = Path(ci_data.vg_train).read_text().splitlines()[:32]
    records = tmp_path / "vg-small.jsonl"
    image_root = Path(ci_data.vg_train).parent
    fixed = []
    for line in rows:
        row = json.loads(line)
        row["image"] = str((image_root / row["image"]).resolve())
        fixed.append(json.dumps(row))
    records.write_text("\n".join(fixed) + "\n")
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
