"""A run folder is complete and consistent, or visibly incomplete (docs/architecture.md, Guarantees).

amc.train.RunFolder: nothing is written before every input was checked; a fresh start removes
what an older run left (its final checkpoint first); --resume trusts only files of the same
configuration; a torn last metrics line does not block resuming.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import stat
from pathlib import Path

import pytest
import torch
import yaml

from amc import train as train_module
from amc.cli import main as amc_main
from tests.helpers import TINY_MODEL


def write_config(path: Path, data, **optim) -> Path:
    config = {
        "model_config": str(TINY_MODEL),
        "vocab": str(data.vocab),
        "data": {"kind": "records", "path": str(data.vg_train), "image_res": 96, "mask_size": 96},
        "optim": {"lr": 1e-3, "min_lr": 1e-4, "schedule": "cosine", "warmup_steps": 1, "epochs": 50,
                  "batch_size": 8, "max_steps": 2, **optim},
        "num_workers": 0,
        "log_every": 1,
    }  # fmt: skip
    path.write_text(yaml.safe_dump(config))
    return path


def amc(*argv) -> int:
    return amc_main([str(a) for a in argv])


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def final_step_and_seed(folder: Path) -> tuple[int, int]:
    saved = torch.load(folder / "checkpoint_final.pt", map_location="cpu", weights_only=False)
    return saved["step"], saved["run_config"]["seed"]


@pytest.fixture(scope="module")
def finished_once(tmp_path_factory, ci_data):
    """A completed two-step run, trained once for the module."""
    folder = tmp_path_factory.mktemp("finished")
    config = write_config(folder / "run.yaml", ci_data)
    assert amc("train", "--config", config, "--out", folder / "out") == 0
    assert (folder / "out" / "checkpoint_final.pt").exists()
    return config, folder / "out"


@pytest.fixture
def finished(finished_once, tmp_path):
    """A copy of the completed run in tmp_path/out."""
    config, template = finished_once
    shutil.copytree(template, tmp_path / "out")
    return config, tmp_path / "out"


@pytest.mark.parametrize(
    "bad",
    [
        ["optim.lr=abc"],
        ["optim.max_steps=-1"],
        ["optim.max_steps=0"],
        ["data.path=/nonexistent/records.jsonl"],
        ["vocab=/nonexistent/vocab.txt"],
        ["init_checkpoint=/nonexistent/ALBEF.pth"],
        ["model_config=/nonexistent/model.yaml"],
    ],
)
def test_a_run_refused_before_it_starts_writes_nothing(finished, bad, caplog):
    config, out = finished
    before = snapshot(out)
    assert amc("train", "--config", config, "--out", out, *bad) == 2
    assert snapshot(out) == before, "a refused run changed the folder of the finished one"
    assert amc("train", "--config", config, "--out", out, "--resume", *bad) == 2
    assert snapshot(out) == before


def test_a_fresh_run_that_fails_leaves_no_old_final_checkpoint(finished, monkeypatch, caplog):
    config, out = finished

    def fail(*args, **kwargs):
        raise RuntimeError("killed")

    # A new run (another seed, no --resume) in the finished run's folder, failing at its first step.
    monkeypatch.setattr(train_module.TrainingStep, "forward", fail)
    with pytest.raises(RuntimeError, match="killed"):
        amc("train", "--config", config, "--out", out, "seed=1")
    assert not (out / "checkpoint_final.pt").exists(), "the old final checkpoint still looks like a result"
    assert not (out / "checkpoint_last.pt").exists() and not (out / "metrics.jsonl").exists()
    assert yaml.safe_load((out / "config.resolved.yaml").read_text())["seed"] == 1
    monkeypatch.undo()

    # --resume does not call it complete: it trains the new run.
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert amc("train", "--config", config, "--out", out, "--resume", "seed=1") == 0
    assert "nothing to resume" not in caplog.text
    assert final_step_and_seed(out) == (2, 1)


def test_resume_trusts_only_a_folder_of_the_same_configuration(finished, caplog):
    config, out = finished
    with caplog.at_level(logging.INFO):
        assert amc("train", "--config", config, "--out", out, "--resume") == 0
    assert "nothing to resume" in caplog.text
    # Another configuration: the old run is cleared and the new one trained.
    assert amc("train", "--config", config, "--out", out, "--resume", "optim.max_steps=3") == 0
    assert "configuration changed" in caplog.text
    assert final_step_and_seed(out) == (3, 0)
    # A folder whose config.resolved.yaml is gone cannot vouch for its checkpoints.
    (out / "config.resolved.yaml").unlink()
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert amc("train", "--config", config, "--out", out, "--resume", "optim.max_steps=3") == 0
    assert "cannot be trusted; starting afresh" in caplog.text


def test_a_torn_metrics_line_does_not_block_resume(tmp_path, ci_data, caplog):
    config = write_config(tmp_path / "run.yaml", ci_data, max_steps=4)
    out = tmp_path / "out"
    assert amc("train", "--config", config, "--out", out, "save_every_steps=2") == 0
    # As after a kill during step 4's log line: the checkpoint of step 2, metrics of steps 1-3, a
    # torn fourth line (and, as Snakemake does before rerunning, no final checkpoint).
    lines = (out / "metrics.jsonl").read_text().splitlines()
    (out / "checkpoint_final.pt").unlink()
    saved = torch.load(out / "checkpoint_last.pt", map_location="cpu", weights_only=False)
    assert saved["step"] == 2
    (out / "metrics.jsonl").write_text("\n".join(lines[:3]) + "\n" + lines[3][:10])
    with caplog.at_level(logging.WARNING):
        assert amc("train", "--config", config, "--out", out, "--resume", "save_every_steps=2") == 0
    assert "torn last line" in caplog.text
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]  # resumed at step 2: no step twice, none missing
    assert final_step_and_seed(out) == (4, 0)


def test_a_run_stored_before_the_configuration_was_typed_still_resumes(tmp_path, ci_data, caplog):
    """Before the run configuration was typed, config.resolved.yaml and the checkpoints stored a
    selection split as written, without its optional keys (now stored as null): such a run resumes."""
    config = write_config(tmp_path / "run.yaml", ci_data, max_steps=4)
    split = {"name": "flickr30k", "records": str(ci_data.flickr_test)}
    config.write_text(config.read_text() + yaml.safe_dump({"selection": {"splits": [split]}}))
    out = tmp_path / "out"
    assert amc("train", "--config", config, "--out", out, "save_every_steps=2") == 0
    (out / "checkpoint_final.pt").unlink()
    resolved = yaml.safe_load((out / "config.resolved.yaml").read_text())
    assert resolved["selection"]["splits"] == [
        {**split, "image_res": None, "max_words": None, "resize": None}
    ]
    resolved["selection"]["splits"] = [split]
    (out / "config.resolved.yaml").write_text(yaml.safe_dump(resolved, sort_keys=False))
    saved = torch.load(out / "checkpoint_last.pt", map_location="cpu", weights_only=False)
    saved["run_config"]["selection"]["splits"] = [split]
    del saved["images_replaced"]  # nor did checkpoints count replaced images then
    torch.save(saved, out / "checkpoint_last.pt")
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert amc("train", "--config", config, "--out", out, "--resume", "save_every_steps=2") == 0
    assert f"resumed from {out / 'checkpoint_last.pt'} at step {saved['step']}" in caplog.text
    assert "starting afresh" not in caplog.text
    assert final_step_and_seed(out) == (4, 0)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["images_replaced"] for r in rows] == [0, 0, 0, 0]  # counted from 0 where it was not saved


def test_an_input_inside_the_run_is_not_overwritten(finished, tmp_path):
    config, out = finished
    # Fine-tuning from the finished run's own final checkpoint into the same folder would delete it.
    assert (
        amc("train", "--config", config, "--out", out, f"init_checkpoint={out / 'checkpoint_final.pt'}") == 2
    )
    assert (out / "checkpoint_final.pt").exists()
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert amc("train", "--config", config, "--out", blocker) == 2


def test_every_file_of_a_run_has_the_mode_the_umask_gives(finished_once):
    """Checkpoints, metrics and config alike: 0o666 less the umask, not a temporary file's 0600."""
    _, out = finished_once
    umask = os.umask(0)
    os.umask(umask)
    if umask & 0o044:
        pytest.skip(f"umask {umask:03o} hides the difference from 0600")
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in out.rglob("*") if p.is_file()}
    assert {"checkpoint_final.pt", "metrics.jsonl", "config.resolved.yaml"} <= set(modes)
    assert modes == dict.fromkeys(modes, 0o666 & ~umask)


def test_a_fresh_start_removes_what_an_older_run_selected(finished):
    config, out = finished
    (out / "checkpoint_best_flickr30k.pt").write_bytes(b"old")
    (out / "selection.jsonl").write_text('{"epoch": 0}\n')
    (out / "selection").mkdir()
    (out / "selection" / "flickr30k.pt").write_bytes(b"old")
    assert amc("train", "--config", config, "--out", out, "seed=1") == 0
    assert not (out / "checkpoint_best_flickr30k.pt").exists()
    assert not (out / "selection.jsonl").exists() and not (out / "selection").exists()
    assert final_step_and_seed(out) == (2, 1)


def test_a_recorded_configuration_that_is_not_a_mapping_vouches_for_nothing(finished, caplog):
    config, out = finished
    (out / "config.resolved.yaml").write_text("- a list\n- not a run configuration\n")
    with caplog.at_level(logging.INFO):
        assert amc("train", "--config", config, "--out", out, "--resume") == 0
    assert "cannot be trusted; starting afresh" in caplog.text
    assert yaml.safe_load((out / "config.resolved.yaml").read_text())["seed"] == 0


def test_a_last_checkpoint_of_another_configuration_is_not_resumed(tmp_path, ci_data, caplog):
    config = write_config(tmp_path / "run.yaml", ci_data, max_steps=4)
    out = tmp_path / "out"
    assert amc("train", "--config", config, "--out", out, "save_every_steps=2") == 0
    (out / "checkpoint_final.pt").unlink()
    saved = torch.load(out / "checkpoint_last.pt", map_location="cpu", weights_only=False)
    saved["run_config"]["seed"] = 7  # config.resolved.yaml still says seed 0
    torch.save(saved, out / "checkpoint_last.pt")
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert amc("train", "--config", config, "--out", out, "--resume", "save_every_steps=2") == 0
    assert "saved by another configuration; starting afresh" in caplog.text
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]  # trained from step 0
    assert final_step_and_seed(out) == (4, 0)


@pytest.mark.parametrize("step", ['"2"', "true"])
def test_a_metrics_row_without_a_whole_step_stops_resume_naming_the_file(tmp_path, ci_data, step, caplog):
    config = write_config(tmp_path / "run.yaml", ci_data, max_steps=4)
    out = tmp_path / "out"
    assert amc("train", "--config", config, "--out", out, "save_every_steps=2") == 0
    (out / "checkpoint_final.pt").unlink()
    (out / "metrics.jsonl").write_text(f'{{"step": 1, "loss": 1.0}}\n{{"step": {step}, "loss": 1.0}}\n')
    with caplog.at_level(logging.ERROR):
        assert amc("train", "--config", config, "--out", out, "--resume", "save_every_steps=2") == 2
    assert f"{out / 'metrics.jsonl'}: a row without a whole-number 'step'" in caplog.text


@pytest.mark.parametrize(
    ("key", "output"),
    [
        ("data.path", "checkpoint_final.pt"),
        ("vocab", "config.resolved.yaml"),
        ("model_config", "config.resolved.yaml"),
        ("init_checkpoint", "checkpoint_final.pt"),
    ],
)
def test_an_input_that_is_an_output_is_refused_naming_both(finished, key, output, caplog):
    config, out = finished
    with caplog.at_level(logging.ERROR):
        assert amc("train", "--config", config, "--out", out, f"{key}={out / output}") == 2
    assert (
        f"--out ({output}) {out / output}: is also {key}; an output never overwrites an input" in caplog.text
    )


def test_the_out_folder_and_metrics_file_are_named_when_they_cannot_be(finished, tmp_path, caplog):
    config, out = finished
    blocker = tmp_path / "file"
    blocker.write_text("")
    with caplog.at_level(logging.ERROR):
        assert amc("train", "--config", config, "--out", blocker) == 2
        assert amc("train", "--config", config, "--out", out, "--metrics", out / "checkpoint_last.pt") == 2
    assert f"--out {blocker}: is a file, not a folder" in caplog.text
    assert f"--metrics {out / 'checkpoint_last.pt'}: is also --out (checkpoint_last.pt)" in caplog.text


def test_without_resume_a_finished_run_is_trained_again(finished):
    config, out = finished
    from amc.run_config import load_run_config

    assert train_module.train(load_run_config(str(config), []), out).steps == 2


def test_a_vocabulary_the_model_config_does_not_declare_is_refused(finished, tmp_path, caplog):
    config, out = finished
    vocab = tmp_path / "short-vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a"]) + "\n")
    with caplog.at_level(logging.ERROR):
        assert amc("train", "--config", config, "--out", tmp_path / "new", f"vocab={vocab}") == 2
    assert f"{vocab}: the vocabulary has 6 tokens but" in caplog.text and "declares vocab_size" in caplog.text
