"""Model selection's bookkeeping with scripted accuracies: the best epoch per benchmark is kept
(ties keep the earlier), published, logged, restored on resume, each split with its own inputs.

The end-to-end check (a real run whose best checkpoints `amc evaluate` scores as logged) is
test_train.py::test_selection_keeps_the_best_epoch_per_benchmark_on_its_split.
"""

from __future__ import annotations

import json
from collections import Counter

import pytest
import torch
from PIL import Image

import amc.evaluate
from amc.evaluate import CaseResult, EvalInputs
from amc.io import AmcError, DataError
from amc.models.tokenizer import AlbefTokenizer
from amc.records import Record, save_records
from amc.selection import BestCheckpoints, best_checkpoint_name, parse_selection
from tests.helpers import SMALL, tiny_model

# Accuracy per evaluation (one per epoch end) of each split.
SCRIPT = {"flickr30k": [0.2, 0.5, 0.5, 0.3], "refcoco+": [0.4, 0.1, 0.6, 0.6]}
BEST_EPOCH = {"flickr30k": 1, "refcoco+": 2}  # the first maximum


@pytest.fixture
def records(tmp_path):
    image = tmp_path / "a.png"
    Image.new("RGB", (40, 30), (90, 20, 200)).save(image)
    paths = {}
    for name in SCRIPT:
        paths[name] = tmp_path / f"{name}-val.jsonl"
        save_records(
            paths[name], [Record(f"{name}/0", name, "val", str(image), 40, 30, "a thing", [[1, 1, 9, 9]])]
        )
    return paths


def scripted_evaluate(monkeypatch) -> list[tuple[str, EvalInputs, int]]:
    """Replace amc.evaluate.evaluate: each split gets its next scripted accuracy (over 10 cases)."""
    calls, left = [], {name: list(values) for name, values in SCRIPT.items()}

    def evaluate(model, tokenizer, records, *, inputs, device, num_workers, **_):
        name = records[0].dataset
        calls.append((name, inputs, model.config.image_res))
        assert not model.training
        hits = round(10 * left[name].pop(0))
        return [CaseResult(str(i), [0, 0], i < hits, None) for i in range(10)], Counter()

    monkeypatch.setattr(amc.evaluate, "evaluate", evaluate)
    return calls


def selector(tmp_path, records, **refcoco) -> BestCheckpoints:
    splits = parse_selection(
        {
            "splits": [
                {"name": "flickr30k", "records": str(records["flickr30k"])},
                {"name": "refcoco+", "records": str(records["refcoco+"]), **refcoco},
            ]
        }
    )
    tokenizer = AlbefTokenizer(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "thing"])
    return BestCheckpoints(tmp_path / "run", splits, tokenizer, torch.device("cpu"), 0)


def run_epochs(best: BestCheckpoints, model, epochs: range) -> list[tuple[int, str]]:
    """Evaluate after each epoch (4 steps each); returns the (epoch, path) of every save."""
    saved = []

    def save_for(epoch):
        def save(path):
            path.write_text(str(epoch))
            saved.append((epoch, path.name))

        return save

    for epoch in epochs:
        best.evaluate(model, epoch=epoch, step=4 * (epoch + 1), save=save_for(epoch))
    return saved


def test_the_best_epoch_of_each_split_is_kept_and_published(tmp_path, records, monkeypatch):
    calls = scripted_evaluate(monkeypatch)
    best = selector(tmp_path, records)
    model = tiny_model(**SMALL).train()
    saved = run_epochs(best, model, range(4))
    assert saved == [
        (0, "best_flickr30k.pt"),
        (0, "best_refcoco+.pt"),
        (1, "best_flickr30k.pt"),
        (2, "best_refcoco+.pt"),
    ]
    assert model.training  # the training model is left as it was
    rows = best.rows()
    assert [(r["epoch"], r["step"], r["split"]) for r in rows] == [
        (epoch, 4 * (epoch + 1), name) for epoch in range(4) for name in SCRIPT
    ]
    assert [r["accuracy"] for r in rows] == pytest.approx(
        [a for pair in zip(*SCRIPT.values(), strict=True) for a in pair]
    )
    assert [r["best"] for r in rows] == [True, True, True, False, False, True, False, False]
    assert best.best == {"flickr30k": 0.5, "refcoco+": 0.6}
    published = best.publish()
    assert [p.name for p in published] == [best_checkpoint_name(name) for name in SCRIPT]
    for name, epoch in BEST_EPOCH.items():
        assert (tmp_path / "run" / best_checkpoint_name(name)).read_text() == str(epoch)
    # each benchmark's own inputs, at the model's resolution
    assert [(name, inputs.max_words, inputs.resize, res) for name, inputs, res in calls[:2]] == [
        ("flickr30k", 50, "cv2-linear", 32),
        ("refcoco+", 30, "pil-bicubic", 32),
    ]


def test_a_split_evaluates_at_its_resolution_with_its_overrides(tmp_path, records, monkeypatch):
    calls = scripted_evaluate(monkeypatch)
    best = selector(tmp_path, records, image_res=48, max_words=7, resize="cv2-linear")
    model = tiny_model(**SMALL)
    run_epochs(best, model, range(1))
    (_, flickr, flickr_res), (_, refcoco, refcoco_res) = calls
    assert (flickr_res, flickr.image_res) == (32, 32)
    assert (refcoco_res, refcoco.image_res, refcoco.max_words, refcoco.resize) == (48, 48, 7, "cv2-linear")
    assert model.config.image_res == 32 and model.visual_encoder.pos_embed.shape[1] == 1 + 16  # untouched


def test_a_selection_split_with_no_evaluated_case_is_an_error_naming_it(tmp_path, records, monkeypatch):
    monkeypatch.setattr(amc.evaluate, "evaluate", lambda *args, **kwargs: ([], Counter()))
    best = selector(tmp_path, records)
    with pytest.raises(
        DataError, match=r"flickr30k-val.jsonl: no case of selection split flickr30k could be evaluated$"
    ):
        run_epochs(best, tiny_model(**SMALL), range(1))
    assert not best.log_path.exists()  # nothing recorded for a split that was not evaluated


def test_resuming_forgets_later_rows_and_keeps_the_best_so_far(tmp_path, records, monkeypatch):
    scripted_evaluate(monkeypatch)
    best = selector(tmp_path, records)
    run_epochs(best, tiny_model(**SMALL), range(3))
    again = selector(tmp_path, records)
    again.restore(resumed_step=8)  # resumed after epoch 1: epoch 2's rows are gone
    assert [r["epoch"] for r in again.rows()] == [0, 0, 1, 1]
    assert again.best == {"flickr30k": 0.5, "refcoco+": 0.4}


def test_selection_section_errors_name_the_entry():
    assert parse_selection(None) == [] and parse_selection({"splits": []}) == []
    with pytest.raises(AmcError, match="^run configuration: selection must be"):
        parse_selection({"splits": [], "other": 1})
    with pytest.raises(AmcError, match="^run.yaml: selection must be"):
        parse_selection({"splits": "a"}, source="run.yaml")
    for entry in ({"name": "a"}, {"records": "x"}):  # each of the two is needed
        with pytest.raises(AmcError, match="entry 1 needs name and records"):
            parse_selection({"splits": [entry]})
    with pytest.raises(AmcError, match="entry 2 is not a mapping"):
        parse_selection({"splits": [{"name": "a", "records": "x"}, "b"]})
    with pytest.raises(AmcError, match=r"entry 1 needs name and records .* unknown: \['path'\]"):
        parse_selection({"splits": [{"name": "a", "records": "x", "path": "y"}]})
    with pytest.raises(AmcError, match="names repeat"):
        parse_selection({"splits": [{"name": "a", "records": "x"}, {"name": "a", "records": "y"}]})
    with pytest.raises(AmcError, match="entry 1: resize must be one of"):
        parse_selection({"splits": [{"name": "flickr30k", "records": "x", "resize": "linear"}]})


def test_the_run_log_is_json_lines(tmp_path, records, monkeypatch):
    scripted_evaluate(monkeypatch)
    best = selector(tmp_path, records)
    assert best.evaluate(tiny_model(**SMALL), epoch=0, step=4, save=lambda path: path.write_text("")) == {
        "flickr30k": pytest.approx(SCRIPT["flickr30k"][0]),
        "refcoco+": pytest.approx(SCRIPT["refcoco+"][0]),
    }
    lines = (tmp_path / "run" / "selection.jsonl").read_text().splitlines()
    assert [json.loads(line)["split"] for line in lines] == ["flickr30k", "refcoco+"]


def test_publishing_copies_where_hard_links_fail(tmp_path, records, monkeypatch):
    scripted_evaluate(monkeypatch)
    best = selector(tmp_path, records)
    run_epochs(best, tiny_model(**SMALL), range(2))

    def no_links(source, target):
        raise OSError("hard links not supported")

    monkeypatch.setattr("amc.selection.os.link", no_links)
    published = best.publish()
    # epochs 0 and 1: Flickr30k's best is epoch 1 (0.5 > 0.2), RefCOCO+'s epoch 0 (0.4 > 0.1)
    assert {p.name: p.read_text() for p in published} == {
        "checkpoint_best_flickr30k.pt": "1",
        "checkpoint_best_refcoco+.pt": "0",
    }
    assert all(path.stat().st_nlink == 1 for path in published)  # copies, not links
    assert not list((tmp_path / "run").glob("*.tmp"))


def test_a_split_with_a_missing_image_is_an_error_before_training(tmp_path, records):
    missing = tmp_path / "missing.jsonl"
    save_records(
        missing, [Record("r/0", "refcoco+", "val", str(tmp_path / "none.png"), 40, 30, "a", [[1, 1, 9, 9]])]
    )
    splits = parse_selection({"splits": [{"name": "refcoco+", "records": str(missing)}]})
    with pytest.raises(AmcError, match="none.png"):
        BestCheckpoints(tmp_path / "run", splits, None, torch.device("cpu"), 0)


def test_the_gpu_cache_is_emptied_after_an_evaluation_on_the_gpu_only(tmp_path, records, monkeypatch):
    scripted_evaluate(monkeypatch)  # the device only passes through: no GPU needed
    emptied = []
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: emptied.append(True))
    model = tiny_model(**SMALL)
    for device, calls in (("cpu", 0), ("cuda", 1)):
        splits = parse_selection({"splits": [{"name": "flickr30k", "records": str(records["flickr30k"])}]})
        best = BestCheckpoints(tmp_path / device, splits, None, torch.device(device), 0)
        best.evaluate(model, epoch=0, step=1, save=lambda path: path.write_text(""))
        assert len(emptied) == calls
