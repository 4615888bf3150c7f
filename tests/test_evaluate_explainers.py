"""``amc evaluate``: the default result unchanged (against a result of the code before explainers),
the energy of each case, and ``--explainer``: one process, one result per explainer and split."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from model_fixtures import GOLDEN, tiny_model

import amc.models.checkpoint
from amc.cli import main as amc_main
from amc.metrics import energy_in_boxes, upsample_heatmap
from amc.models.albef import ALBEF
from amc.models.checkpoint import save_checkpoint
from amc.records import load_records
from tests.engine_fixtures import TINY_MODEL, ci_data  # noqa: F401

# Made by `amc evaluate` of main at 9e75cbd, before explainers and the energy metric existed, on the
# same checkpoint, data and batch sizes as below (the file names what it holds).
DEFAULT_GOLDEN = GOLDEN / "default_eval_ci.json"
NEW_SUMMARY_FIELDS = {"explainer", "energy", "energy_undefined"}


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("explainers") / "tiny.pt"
    save_checkpoint(path, tiny_model())  # deterministic weights: the golden's checkpoint
    return path


def _run(checkpoint, vocab, records, benchmarks, splits, outs, *extra) -> int:
    return amc_main(
        [
            "evaluate", "--checkpoint", str(checkpoint), "--model-config", str(TINY_MODEL), "--vocab", str(vocab),
            "--records", *map(str, records), "--benchmark", *benchmarks, "--split", *splits,
            "--out", *map(str, outs), "--num-workers", "0", "--images-per-batch", "3",
            "--phrases-per-batch", "5", *map(str, extra),
        ]
    )  # fmt: skip


def _read(path) -> dict:
    return json.loads(Path(path).read_text())


def _without_energy(cases: list[dict]) -> list[dict]:
    return [{key: value for key, value in case.items() if key != "energy"} for case in cases]


def test_default_evaluation_is_unchanged_apart_from_the_new_fields(tmp_path, ci_data, tiny_checkpoint):  # noqa: F811
    golden = json.loads(DEFAULT_GOLDEN.read_text())["results"]
    outs = [tmp_path / "flickr30k-test.json", tmp_path / "refcoco+-testA.json"]
    records = [ci_data.flickr_test, ci_data.refcoco_testA]
    assert (
        _run(tiny_checkpoint, ci_data.vocab, records, ["flickr30k", "refcoco+"], ["test", "testA"], outs) == 0
    )
    for out, name in zip(outs, ("flickr30k-test", "refcoco+-testA"), strict=True):
        result = _read(out)
        # every old field of every case, in the same order, and the new one last
        assert _without_energy(result["cases"]) == golden[name]["cases"]
        assert all(list(case)[-1] == "energy" for case in result["cases"])
        for key, value in golden[name]["summary"].items():
            assert result["summary"][key] == value, key
        assert NEW_SUMMARY_FIELDS <= set(result["summary"])
        assert result["summary"]["explainer"] == {"name": "gradcam", "layer": 1}  # tiny.yaml's gradcam_layer


def test_each_case_records_the_energy_of_its_scored_map(tmp_path, ci_data, tiny_checkpoint):  # noqa: F811
    out, heatmaps = tmp_path / "r.json", tmp_path / "h.npz"
    code = _run(
        tiny_checkpoint,
        ci_data.vocab,
        [ci_data.refcoco_testA],
        ["refcoco+"],
        ["testA"],
        [out],
        "--heatmaps",
        heatmaps,
    )
    assert code == 0
    result, maps = _read(out), np.load(heatmaps)
    records = {r.id: r for r in load_records(ci_data.refcoco_testA)}
    energies = []
    for case in result["cases"]:
        record = records[case["id"]]
        upsampled = upsample_heatmap(torch.from_numpy(maps[case["id"]]), record.height, record.width)
        expected = energy_in_boxes(upsampled, record.boxes)
        assert case["energy"] == pytest.approx(expected, abs=1e-6)
        energies.append(case["energy"])
    assert len(set(energies)) > 5 and 0.0 < min(energies) and max(energies) < 1.0
    assert result["summary"]["energy"] == pytest.approx(np.mean(energies))
    assert result["summary"]["energy_undefined"] == 0


EVERY = ["gradcam", "gradcam:layer=2", "attention", "gradcam-mean", "rollout"]
SLUGS = ["gradcam-layer1", "gradcam-layer2", "attention-layer1", "gradcam-mean", "rollout"]


def test_explainers_in_one_process_equal_one_call_each(tmp_path, ci_data, tiny_checkpoint, monkeypatch):  # noqa: F811
    records = [ci_data.flickr_test, ci_data.refcoco_testA]
    benchmarks, splits = ["flickr30k", "refcoco+"], ["test", "testA"]
    limit = ("--limit", "20")
    loads, encoded = [], []
    load_model, encode_image = amc.models.checkpoint.load_model, ALBEF.encode_image
    monkeypatch.setattr(
        amc.models.checkpoint, "load_model", lambda *a, **k: loads.append(1) or load_model(*a, **k)
    )
    monkeypatch.setattr(
        ALBEF, "encode_image", lambda self, x: encoded.append(x.shape[0]) or encode_image(self, x)
    )
    outs = [
        tmp_path / "all" / "flickr30k-test-{explainer}.json",
        tmp_path / "all" / "refcoco+-testA-{explainer}.json",
    ]
    explainers = [arg for name in EVERY for arg in ("--explainer", name)]
    assert _run(tiny_checkpoint, ci_data.vocab, records, benchmarks, splits, outs, *limit, *explainers) == 0
    assert len(loads) == 1  # the model is loaded once for every explainer and split
    together = list(encoded)
    encoded.clear()
    assert (
        _run(
            tiny_checkpoint,
            ci_data.vocab,
            records,
            benchmarks,
            splits,
            [tmp_path / "d1.json", tmp_path / "d2.json"],
            *limit,
        )
        == 0
    )
    assert together == encoded  # each image encoded once for all explainers, as for the default map
    default = [_read(tmp_path / "d1.json"), _read(tmp_path / "d2.json")]
    for split_number, (records_path, benchmark, split) in enumerate(
        zip(records, benchmarks, splits, strict=True)
    ):
        for name, slug in zip(EVERY, SLUGS, strict=True):
            combined = _read(tmp_path / "all" / f"{benchmark}-{split}-{slug}.json")
            alone = tmp_path / f"alone-{split}-{slug}.json"
            args = ("--explainer", name, *limit)
            assert (
                _run(tiny_checkpoint, ci_data.vocab, [records_path], [benchmark], [split], [alone], *args)
                == 0
            )
            assert combined["cases"] == _read(alone)["cases"], (split, name)
            expected = {"name": name.split(":")[0]} | ({"layer": int(slug[-1])} if "layer" in slug else {})
            assert combined["summary"]["explainer"] == expected
            assert combined["summary"]["n_cases"] == 20
        # the default explainer is the default evaluation, case for case
        assert (
            _read(tmp_path / "all" / f"{benchmark}-{split}-gradcam-layer1.json")["cases"]
            == default[split_number]["cases"]
        )
    accuracies = {
        slug: _read(tmp_path / "all" / f"flickr30k-test-{slug}.json")["summary"]["accuracy"] for slug in SLUGS
    }
    points = {
        slug: [c["point"] for c in _read(tmp_path / "all" / f"flickr30k-test-{slug}.json")["cases"]]
        for slug in SLUGS
    }
    assert len({tuple(map(tuple, p)) for p in points.values()}) == len(SLUGS), (
        accuracies
    )  # five different maps


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("--explainer", "gradcam:layer=0"), "layer 0 is not a fusion layer of this model"),
        (("--explainer", "attention:layer=5"), "layer 5 is not a fusion layer of this model"),
        (
            ("--explainer", "gradcam", "--explainer", "rollout"),
            "each --out names the explainer as {explainer}",
        ),
        (("--explainer", "rollout", "--heatmaps", "h.npz"), "--heatmaps saves the default GradCAM maps"),
        (("--explainer", "saliency"), "unknown name 'saliency'"),
    ],
)
def test_bad_explainer_arguments_are_clear_errors(tmp_path, ci_data, tiny_checkpoint, caplog, extra, message):  # noqa: F811
    out = tmp_path / "out.json"
    assert (
        _run(tiny_checkpoint, ci_data.vocab, [ci_data.refcoco_testA], ["refcoco+"], ["testA"], [out], *extra)
        == 2
    )
    assert message in caplog.text
    assert not any(tmp_path.iterdir())
