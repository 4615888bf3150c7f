"""Errors a person can cause are one-line messages, found before the work (docs/architecture.md, Guarantees).

Every numeric flag is range-checked where it enters; every command checks where it writes before
it reads or computes; a DataLoader worker's error reaches the person as its own message.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import re
from pathlib import Path

import pytest
import torch

from amc.cli import COMMANDS, error_message, main
from amc.io import DataError
from amc.models.albef import ALBEF
from amc.models.checkpoint import save_checkpoint
from amc.models.config import ModelConfig
from tests.engine_fixtures import TINY_MODEL, ci_data  # noqa: F401


def command_parsers():
    for name, (module_name, _) in COMMANDS.items():
        parser = argparse.ArgumentParser(prog=f"amc {name}")
        importlib.import_module(module_name).configure_parser(parser)
        yield name, parser


def test_every_numeric_flag_is_range_checked():
    plain = [
        f"amc {name} {'/'.join(action.option_strings)}"
        for name, parser in command_parsers()
        for action in parser._actions
        if action.type in (int, float)
    ]
    assert plain == [], "flags whose numbers are not range-checked (amc.cli.positive_int & co.)"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["evaluate", "--limit", "-1"], "argument --limit: '-1' is not a whole number >= 1"),
        (["evaluate", "--limit", "0"], "argument --limit: '0' is not a whole number >= 1"),
        (["evaluate", "--num-workers", "-2"], "'-2' is not a whole number >= 0"),
        (["download", "x", "--timeout", "nan"], "'nan' is not a finite number > 0"),
        (["synth", "--out", "x", "--seed", "1.5"], "'1.5' is not a whole number >= 0"),
    ],
)
def test_a_number_out_of_range_is_refused_by_the_flag(argv, message, capsys):
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2
    assert message in capsys.readouterr().err


class _Failing(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 2

    def __getitem__(self, index):
        raise DataError("records.jsonl: record 2: image broken.jpg cannot be read")


def test_a_worker_error_is_its_own_one_line_message():
    loader = torch.utils.data.DataLoader(_Failing(), num_workers=1)
    with pytest.raises(DataError) as error:
        next(iter(loader))
    assert "Traceback" in str(error.value)  # what torch makes of it
    assert error_message(error.value) == "records.jsonl: record 2: image broken.jpg cannot be read"
    assert error_message(DataError("plain")) == "plain"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = ALBEF(ModelConfig.from_file(TINY_MODEL))
    path = tmp_path_factory.mktemp("ckpt") / "random.pt"
    save_checkpoint(path, model)
    return path


def evaluate(records, checkpoint, vocab, out, *extra) -> int:
    return main(
        ["evaluate", "--checkpoint", str(checkpoint), "--model-config", str(TINY_MODEL), "--vocab", str(vocab),
         "--records", str(records), "--benchmark", "flickr30k", "--split", "test", "--out", str(out),
         "--num-workers", "0", *map(str, extra)]
    )  # fmt: skip


def test_evaluate_never_writes_over_its_input(tmp_path, ci_data, checkpoint, caplog):  # noqa: F811
    records = tmp_path / "records.jsonl"
    records.write_bytes(Path(ci_data.flickr_test).read_bytes())
    before = records.read_bytes()
    assert evaluate(records, checkpoint, ci_data.vocab, records) == 2
    assert "--out (flickr30k test) " in caplog.text and "is also --records (flickr30k test)" in caplog.text
    assert records.read_bytes() == before
    assert evaluate(records, checkpoint, ci_data.vocab, checkpoint) == 2
    assert "is also --checkpoint" in caplog.text
    # With several explainers the files are named once the explainers resolve: checked then, still first.
    named = copy_records(Path(ci_data.flickr_test), tmp_path, "r-rollout.json")
    before = named.read_bytes()
    template = tmp_path / "r-{explainer}.json"
    assert (
        evaluate(
            named, checkpoint, ci_data.vocab, template, "--explainer", "rollout", "--explainer", "attention"
        )
        == 2
    )
    assert "--out (flickr30k test, rollout)" in caplog.text and named.read_bytes() == before
    assert not (tmp_path / "r-attention-layer1.json").exists()


def test_an_output_under_a_file_is_refused_first(tmp_path, ci_data, checkpoint, caplog, monkeypatch):  # noqa: F811
    blocker = tmp_path / "file"
    blocker.write_text("")

    def no_work(*args, **kwargs):
        raise AssertionError("the evaluation ran before the output was checked")

    monkeypatch.setattr("amc.evaluate.evaluate", no_work)
    assert evaluate(ci_data.flickr_test, checkpoint, ci_data.vocab, blocker / "out.json") == 2
    assert f"{blocker} is a file, not a folder" in caplog.text
    # The other commands check their outputs the same way, first.
    caplog.clear()
    assert main(["prepare", "flickr30k", "--root", "nowhere", "--out", str(blocker / "r.jsonl")]) == 2
    assert "is a file, not a folder" in caplog.text
    assert main(["export-checkpoint", str(checkpoint), str(checkpoint), "--layout", "albef"]) == 2
    assert "DST" in caplog.text and "is also SRC" in caplog.text
    assert main(["synth", "--out", str(blocker), "--seed", "0"]) == 2
    assert main(["download", "x", "--dest", str(blocker)]) == 2
    caplog.clear()
    assert main(["bench", "--out", str(blocker / "bench.json"), "--device", "cpu"]) == 2  # not minutes later
    assert "--out" in caplog.text and "is a file, not a folder" in caplog.text
    assert main(["report", "table1", "--run", str(blocker)]) == 2
    image = tmp_path / "image.png"
    image.write_bytes(b"")
    assert main(["gradcam", "--model-config", str(TINY_MODEL), "--checkpoint", str(checkpoint), "--vocab",
                 str(ci_data.vocab), "--image", str(image), "--text", "a", "--output", str(image)]) == 2  # fmt: skip
    assert "--output" in caplog.text and "is also --image" in caplog.text


def copy_records(source: Path, folder: Path, name: str) -> Path:
    """``source`` copied to ``folder/name`` (images as absolute paths), without a prepare report."""
    rows = [json.loads(line) for line in source.read_text().splitlines()]
    for row in rows:
        row["image"] = str((source.parent / row["image"]).resolve())
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder / name


@pytest.mark.parametrize(
    ("report", "message"),
    [
        (lambda sha: b'{"dataset": "flickr30k", \xff}', r"test.prepare.json:1: not UTF-8 text"),
        (lambda sha: b'{"dataset": ', r"test.prepare.json: not valid JSON"),
        (lambda sha: json.dumps({"dataset": "flickr30k", "split": "test", "records": -1, "skipped": {},
                                 "left_out": {}, "records_sha256": sha}).encode(), "field 'records'"),
        (lambda sha: json.dumps({"dataset": "flickr30k", "split": "test", "records": 3, "skipped": {"x": "2"},
                                 "left_out": {}, "records_sha256": sha}).encode(), "field 'skipped'"),
    ],
)  # fmt: skip
def test_every_input_is_read_before_the_first_evaluation(
    tmp_path,
    ci_data,  # noqa: F811
    checkpoint,
    caplog,
    monkeypatch,
    report,
    message,
):
    from amc.io import sha256_file
    from amc.records import prepare_report_path

    def no_work(*args, **kwargs):
        raise AssertionError("an evaluation ran before every input was read")

    monkeypatch.setattr("amc.evaluate.evaluate", no_work)
    good = copy_records(Path(ci_data.flickr_test), tmp_path / "a", "test.jsonl")
    bad = copy_records(Path(ci_data.flickr_test), tmp_path / "b", "test.jsonl")
    prepare_report_path(bad).write_bytes(report(sha256_file(bad)))
    argv = ["evaluate", "--checkpoint", str(checkpoint), "--model-config", str(TINY_MODEL), "--vocab",
            str(ci_data.vocab), "--benchmark", "flickr30k", "--num-workers", "0", "--records", str(good),
            str(bad), "--split", "test", "test", "--out", str(tmp_path / "a.json"), str(tmp_path / "b.json")]  # fmt: skip
    assert main(argv) == 2
    assert str(prepare_report_path(bad)) in caplog.text
    assert re.search(message, caplog.text), caplog.text
    # The second split's checkpoint is read before the first split is evaluated, too.
    caplog.clear()
    prepare_report_path(bad).unlink()
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a checkpoint")
    argv[argv.index("--checkpoint") + 1 : argv.index("--checkpoint") + 2] = [str(checkpoint), str(broken)]
    assert main(argv) == 2
    assert str(broken) in caplog.text


def test_an_evaluation_of_no_case_is_an_error_not_zero_accuracy(tmp_path, ci_data, checkpoint, caplog):  # noqa: F811
    rows = [json.loads(line) for line in Path(ci_data.flickr_test).read_text().splitlines()][:3]
    for row in rows:
        row["phrase"] = "!!! ???"  # nothing left after ALBEF's pre_caption
        row["image"] = str((Path(ci_data.flickr_test).parent / row["image"]).resolve())
    records = tmp_path / "records.jsonl"
    records.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with caplog.at_level(logging.INFO):
        assert evaluate(records, checkpoint, ci_data.vocab, tmp_path / "out.json") == 2
    assert "no case was evaluated" in caplog.text and "accuracy" not in caplog.text
    assert not (tmp_path / "out.json").exists()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b'{"id": "a"\n', "not valid JSON"),
        (b"\xff\xfe{}\n", "not UTF-8 text"),
        (b'{"id": 1, "dataset": "d", "split": "s", "image": "i", "width": 1, "height": 1, "phrase": "p",'
         b' "boxes": [[0, 0, 1, 1]]}\n', "field 'id' must be a non-empty string"),
    ],
)  # fmt: skip
def test_bad_records_are_one_line_messages(tmp_path, ci_data, checkpoint, content, message, caplog):  # noqa: F811
    records = tmp_path / "records.jsonl"
    records.write_bytes(content)
    assert evaluate(records, checkpoint, ci_data.vocab, tmp_path / "out.json") == 2
    assert f"{records}" in caplog.text and message in caplog.text
    assert "Traceback" not in caplog.text
