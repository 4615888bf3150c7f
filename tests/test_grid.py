"""The method grid in this process: from a workflow configuration to the runs, their `amc train`
overrides, checkpoints and evaluations (the Snakemake dry runs in test_workflow.py see the same
through the workflow's rules, in another process)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from amc import grid
from amc.io import AmcError
from tests.helpers import REPO


def raw_ci_config() -> dict:
    """config/ci.yaml as written, not yet validated."""
    return yaml.safe_load((REPO / "config/ci.yaml").read_text())


def ci_config(**changes) -> dict:
    """config/ci.yaml validated (schema defaults filled), with ``changes`` applied first."""
    config = raw_ci_config()
    config.update(changes)
    return grid.resolve_paths(grid.validate_config(config))


SWEEP = {
    "base": "amc",
    "parameter": "objectives.amc.delta_mean",
    "values": [0.05, 0.1, 0.3],
    "name": "amc_dmean{value}",
}


def sweep_config(*sweeps, **changes) -> dict:
    return ci_config(sweeps=list(sweeps), **changes)


def test_declared_methods_are_filled_in():
    config = ci_config(seeds=[0, 3])
    methods = grid.expand_methods(config)
    assert list(methods) == ["albef", "amc", "amc_released"]
    amc = methods["amc"]
    assert (amc["optim"], amc["data"], amc["overrides"], amc["checkpoints"], amc["sweep"]) == (
        {},
        {},
        {},
        {},
        None,
    )
    assert amc["seeds"] == [0, 3] and amc["init_checkpoint"] == "results/ci/pretrain/checkpoint_final.pt"
    assert methods["albef"]["objectives"] == {}
    assert methods["albef"]["seeds"] == [0] and methods["amc_released"]["seeds"] == [0]  # untrained: once
    assert methods["amc_released"]["checkpoints"] == {
        "flickr30k": "data/ci/synth/amc/best_ci.pth",
        "refcoco+": "data/ci/synth/amc/best_ci.pth",
    }
    config["methods"]["amc"].update(seeds=[7], init_checkpoint="start.pt")
    amc = grid.expand_methods(config)["amc"]
    assert (amc["seeds"], amc["init_checkpoint"]) == ([7], "start.pt")
    assert config["methods"]["amc"].get("sweep", "absent") == "absent"  # the input is not changed


def test_a_sweep_adds_one_method_per_value_except_the_bases_own():
    config = sweep_config(SWEEP, seeds=[0, 1])
    methods = grid.expand_methods(config)
    assert list(methods) == ["albef", "amc", "amc_released", "amc_dmean0.05", "amc_dmean0.3"]
    swept = methods["amc_dmean0.3"]
    assert swept["objectives"]["amc"] == {**methods["amc"]["objectives"]["amc"], "delta_mean": 0.3}
    assert methods["amc"]["objectives"]["amc"]["delta_mean"] == 0.1  # the base keeps its own
    assert swept["label"] == "AMC, delta_mean = 0.3"  # default label: base label, symbol, value
    assert swept["seeds"] == [0, 1] and swept["init_checkpoint"] == methods["amc"]["init_checkpoint"]
    assert swept["sweep"] == {
        "base": "amc",
        "parameter": "objectives.amc.delta_mean",
        "symbol": "delta_mean",
        "value": 0.3,
    }
    assert swept["kind"] == "finetune" and swept["optim"] == {} and swept["checkpoints"] == {}


def test_a_sweep_value_reaches_the_run_it_names():
    """The sweep's value is in the `amc train` overrides of its method and of no other."""
    config = sweep_config(SWEEP, {**SWEEP, "parameter": "optim.lr", "values": [1e-4], "name": "amc_lr{value}",
                                  "symbol": "lr", "label": "{base_label} at {symbol} {value}", "seeds": [5]})  # fmt: skip
    overrides = grid.train_overrides(config, "amc_dmean0.05", 0)
    assert "method.objectives.amc.delta_mean=0.05" in overrides
    assert "method.name=amc_dmean0.05" in overrides
    assert not any("delta_mean=0.1" in o for o in overrides)
    assert "method.objectives.amc.delta_mean=0.1" in grid.train_overrides(config, "amc", 0)
    lr = grid.expand_methods(config)["amc_lr0.0001"]
    assert lr["label"] == "AMC at lr 0.0001" and lr["seeds"] == [5] and lr["optim"] == {"lr": 1e-4}
    assert "optim.lr=0.0001" in grid.train_overrides(config, "amc_lr0.0001", 5)
    assert "seed=5" in grid.train_overrides(config, "amc_lr0.0001", 5)


def test_the_train_overrides_in_order_later_ones_win():
    config = ci_config()
    config["finetune"]["overrides"] = {"optim.max_steps": 3, "log_every": 1}
    config["methods"]["amc"].update(
        optim={"lr": 2e-4}, data={"augment": {"hflip": 0.0}}, overrides={"optim.max_steps": 9, "note": "a: b"}
    )
    assert grid.train_overrides(config, "amc", 2) == [
        "model_config=config/models/tiny.yaml",
        "vocab=data/ci/synth/vocab/vocab.txt",
        "init_checkpoint=results/ci/pretrain/checkpoint_final.pt",
        "data.kind=records",
        "data.path=data/ci/records/vg-train.jsonl",
        "seed=2",
        "method.name=amc",
        "optim.max_steps=3",
        "log_every=1",
        "method.objectives.amc.delta_mean=0.1",
        "method.objectives.amc.delta_max=0.5",
        "method.objectives.amc.weight_mean=0.2",
        "method.objectives.amc.weight_max=0.8",
        "method.objectives.amc.per_sample_mean=false",
        "optim.lr=0.0002",
        "data.augment.hflip=0.0",
        "optim.max_steps=9",
        'note="a: b"',
    ]
    config["methods"]["amc"]["objectives"] = {}
    assert not any(o.startswith("method.objectives") for o in grid.train_overrides(config, "amc", 0))
    # a method without optim or data entries: nothing of its own after the objectives
    plain = grid.train_overrides(ci_config(), "amc", 0)
    assert plain[7:] == [
        "optim.max_steps=3",  # config/ci.yaml finetune.overrides
        "optim.warmup_steps=1",
        "optim.batch_size=8",
        "num_workers=0",
        "log_every=1",
        "method.objectives.amc.delta_mean=0.1",
        "method.objectives.amc.delta_max=0.5",
        "method.objectives.amc.weight_mean=0.2",
        "method.objectives.amc.weight_max=0.8",
        "method.objectives.amc.per_sample_mean=false",
    ]


@pytest.mark.parametrize(
    ("value", "text"),
    [("plain", "plain"), ("0.1", '"0.1"'), ("true", '"true"'), ("a: b", '"a: b"'), ("[x", '"[x"'),
     (0.1, "0.1"), (True, "true"), (None, "null"), ([1, 2], "[1, 2]"), ({"a": 1}, '{"a": 1}')],
)  # fmt: skip
def test_an_override_value_reads_back_as_itself(value, text):
    assert grid.override_value(value) == text
    assert yaml.safe_load(text) == value


def test_value_text_names_methods():
    assert [grid.value_text(v) for v in (0.05, 1.0, True, False, "x", 3)] == [
        "0.05",
        "1.0",
        "true",
        "false",
        "x",
        "3",
    ]


def test_sweep_axes_put_the_base_at_its_value_in_order():
    config = sweep_config({**SWEEP, "values": [0.3, 0.05]}, {**SWEEP, "parameter": "objectives.amc.delta_max",
                          "values": [0.5, 0.2], "name": "amc_dmax{value}", "symbol": "Δ2"})  # fmt: skip
    first, second = grid.sweep_axes(config)
    assert (first["base"], first["parameter"], first["symbol"]) == (
        "amc",
        "objectives.amc.delta_mean",
        "delta_mean",
    )
    assert [(p["value"], p["method"]) for p in first["points"]] == [
        (0.05, "amc_dmean0.05"),
        (0.1, "amc"),  # the base's own value, though not listed
        (0.3, "amc_dmean0.3"),
    ]
    assert second["symbol"] == "Δ2"
    assert [(p["value"], p["method"]) for p in second["points"]] == [(0.2, "amc_dmax0.2"), (0.5, "amc")]


def test_sweep_errors_name_the_sweep():
    with pytest.raises(grid.GridError, match=r"sweeps\[0\]: base method 'nope' is not in methods"):
        grid.expand_methods(sweep_config({**SWEEP, "base": "nope"}))
    with pytest.raises(grid.GridError, match=r"sweeps\[0\]: base method 'albef' is not a fine-tuning method"):
        grid.expand_methods(sweep_config({**SWEEP, "base": "albef"}))
    with pytest.raises(grid.GridError, match=r"sweeps\[1\]: method name 'amc_dmean0.05' already exists"):
        grid.expand_methods(
            sweep_config(SWEEP, {**SWEEP, "parameter": "objectives.amc.delta_max", "values": [0.05]})
        )


def test_checkpoints_per_kind_and_benchmark():
    config = ci_config()
    final = "results/ci/checkpoints/amc/seed0/checkpoint_final.pt"
    assert grid.checkpoint_path(config, "albef", 0, "flickr30k") == "results/ci/pretrain/checkpoint_final.pt"
    assert grid.checkpoint_path(config, "amc_released", 0, "refcoco+") == "data/ci/synth/amc/best_ci.pth"
    assert grid.checkpoint_path(config, "amc", 0, "flickr30k") == final
    assert grid.checkpoint_path(config, "amc", 0) == final
    with pytest.raises(
        grid.GridError, match=r"methods.amc_released.checkpoints: no checkpoint for benchmark 'vg'"
    ):
        grid.checkpoint_path(config, "amc_released", 0, "vg")
    config["finetune"]["select_best"] = True
    config["benchmarks"]["refcoco+"]["splits"] = ["val", "testA"]
    assert grid.selection_benchmarks(config) == ["refcoco+"]  # Flickr30k has no val split here
    assert (
        grid.checkpoint_path(config, "amc", 1, "refcoco+")
        == "results/ci/checkpoints/amc/seed1/checkpoint_best_refcoco+.pt"
    )
    assert grid.checkpoint_path(config, "amc", 1, "flickr30k").endswith("seed1/checkpoint_final.pt")
    assert grid.selection_splits(config) == [
        {"name": "refcoco+", "records": "data/ci/records/refcoco+-val.jsonl", "image_res": 96}
    ]
    config["benchmarks"]["refcoco+"]["resize"] = "cv2-linear"
    assert grid.selection_splits(config)[0]["resize"] == "cv2-linear"
    overrides = grid.train_overrides(config, "amc", 0)
    assert overrides[7] == (
        'selection.splits=[{"name": "refcoco+", "records": "data/ci/records/refcoco+-val.jsonl", '
        '"image_res": 96, "resize": "cv2-linear"}]'
    )
    config["finetune"]["select_best"] = False
    assert grid.selection_benchmarks(config) == [] and grid.selection_splits(config) == []
    assert not any(o.startswith("selection") for o in grid.train_overrides(config, "amc", 0))


def test_exports_and_the_training_data_of_a_method():
    config = ci_config(seeds=[4, 5])
    assert grid.export_path(config, "amc_seed0") == "results/ci/exports/amc_seed0.pth"
    config["exports"]["first"] = {"method": "amc", "layout": "amc-released"}
    assert grid.export_source(config, "first") == "results/ci/checkpoints/amc/seed4/checkpoint_final.pt"
    config["exports"]["best"] = {
        "method": "amc",
        "seed": 5,
        "benchmark": "refcoco+",
        "layout": "amc-released",
    }
    config["finetune"]["select_best"] = True
    config["benchmarks"]["refcoco+"]["splits"] = ["val"]
    assert (
        grid.export_source(config, "best") == "results/ci/checkpoints/amc/seed5/checkpoint_best_refcoco+.pt"
    )
    assert grid.method_data_path(config, "amc") == "data/ci/records/vg-train.jsonl"
    config["methods"]["amc"]["data"] = {"path": "captions.json"}
    assert grid.method_data_path(config, "amc") == "captions.json"


def test_every_evaluation_of_the_grid():
    targets = grid.eval_targets(ci_config(seeds=[0, 1]))
    assert len(targets) == 2 * 3 + 3 + 3  # amc: 2 seeds x 3 splits; albef and amc_released: 1 seed x 3
    assert targets[0] == {
        "method": "albef",
        "seed": 0,
        "benchmark": "flickr30k",
        "split": "test",
        "path": "results/ci/eval/albef/seed0/flickr30k-test.json",
    }
    assert {(t["method"], t["seed"]) for t in targets} == {
        ("albef", 0),
        ("amc", 0),
        ("amc", 1),
        ("amc_released", 0),
    }
    assert {"results/ci/eval/amc/seed1/refcoco+-testB.json"} <= {t["path"] for t in targets}


def test_paths_are_resolved_from_the_run_and_the_data_folders():
    config = raw_ci_config()
    config["data"]["raw_dir"] = "data/{run}/raw"
    config["data"]["records_dir"] = "{raw_dir}/records"
    config["extra"] = ["{records_dir}/a.jsonl", {"b": "{run}"}, 3]
    resolved = grid.resolve_paths(config)
    assert (
        resolved["data"]["raw_dir"] == "data/ci/raw"
        and resolved["data"]["records_dir"] == "data/ci/raw/records"
    )
    assert resolved["vocab"] == "data/ci/raw/vocab/vocab.txt"
    assert resolved["extra"] == ["data/ci/raw/records/a.jsonl", {"b": "ci"}, 3]
    assert config["vocab"] == "{raw_dir}/vocab/vocab.txt"  # the input is not changed, nor its sections
    assert (config["data"]["raw_dir"], config["data"]["records_dir"]) == (
        "data/{run}/raw",
        "{raw_dir}/records",
    )
    assert resolved["data"]["manifest"] == "amc/resources/synthetic-manifest.yaml"
    real = {**config, "data": {**config["data"], "source": "real", "manifest": None}}
    assert grid.resolve_paths(real)["data"]["manifest"] == grid.DEFAULT_MANIFEST
    own = {**config, "data": {**config["data"], "source": "real", "manifest": "{run}/mine.yaml"}}
    assert grid.resolve_paths(own)["data"]["manifest"] == "ci/mine.yaml"  # a named manifest stays
    synthetic = {**config, "data": {**config["data"], "manifest": None}}
    assert grid.resolve_paths(synthetic)["data"]["manifest"] is None


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda c: c["table1"]["columns"].append({"benchmark": "vg", "split": "test", "label": "VG"}),
         "table1.columns: vg test is not among the evaluated benchmarks/splits"),
        (lambda c: c["table1"]["columns"].append({"benchmark": "flickr30k", "split": "val", "label": "F"}),
         "table1.columns: flickr30k val is not among"),
        (lambda c: c["ablation"].update(reference="nope"), "ablation.reference: method 'nope' is not in methods"),
        (lambda c: c["qualitative"].update(methods=["albef", "nope"]), "qualitative.methods: method 'nope' is not in methods"),
        (lambda c: c["table1"]["rows"].append({"label": "x", "method": "nope", "paper": "AMC"}),
         r"^table1.rows: method 'nope' is not in methods \(albef, amc, amc_released\)$"),
        (lambda c: c["data"].update(source="real"),
         r"^pretrain.enabled needs data.source: synthetic \(the pretrain rule trains on its captions\)$"),
        (lambda c: c["methods"]["amc_released"].update(checkpoints={}),
         r"^methods.amc_released.checkpoints: kind released needs a checkpoint for every benchmark; none for flickr30k, refcoco\+$"),
        (lambda c: c["methods"]["albef"].update(optim={"lr": 1}), "methods.albef: kind none is not trained"),
        (lambda c: c["methods"]["amc_released"].update(overrides={"a": 1}), "methods.amc_released: kind released is not trained"),
        (lambda c: c["methods"]["amc"].update(checkpoints={"flickr30k": "x"}), "methods.amc.checkpoints: only a method of kind released"),
        (lambda c: c["exports"].update(x={"method": "nope"}), r"exports.x.method: 'nope' is not a fine-tuning method"),
        (lambda c: c["exports"].update(x={"method": "albef"}), r"exports.x.method: 'albef' is not a fine-tuning method"),
        (lambda c: c["exports"].update(x={"method": "amc", "seed": 3}), "exports.x.seed: amc is not trained with seed 3"),
        (lambda c: c["exports"].update(x={"method": "amc", "benchmark": "vg"}), "exports.x.benchmark: 'vg' is not a benchmark of the run"),
        # the qualitative figure's benchmark and split: each defaults to the first Table 1 column's
        (lambda c: c["qualitative"].update(split="testA"), "^qualitative: flickr30k testA is not among"),
        (lambda c: c["qualitative"].update(benchmark="refcoco+"), r"^qualitative: refcoco\+ test is not among"),
        (lambda c: c["table1"]["columns"].reverse() or c["qualitative"].update(split="test"),
         r"^qualitative: refcoco\+ test is not among"),
        (lambda c: c["explainers"].update(splits=[{"benchmark": "vg", "split": "test"}]),
         "^explainers.splits: vg test is not among the evaluated benchmarks/splits$"),
        (lambda c: c["pretrain"].update(out_dir="results/other/pretrain"),
         r"^pretrain.out_dir: 'results/other/pretrain' must be a folder inside results/ci/$"),
        (lambda c: c["pretrain"].update(out_dir="results/ci/../x"), "^pretrain.out_dir: 'results/ci/../x' must be"),
    ],
)  # fmt: skip
def test_cross_field_errors_name_the_key(change, message):
    config = ci_config()
    grid.check_grid(config)
    change(config)
    with pytest.raises(grid.GridError, match=message):
        grid.check_grid(config)


def test_a_qualitative_figure_of_another_column_passes():
    config = ci_config()
    config["qualitative"].update(benchmark="refcoco+", split="testB")
    grid.check_grid(config)


def test_names_and_paths_outside_the_run_are_refused_naming_what_they_are():
    with pytest.raises(grid.GridError, match=r"^run: 'a/b' is not a name"):
        grid.run_dir({"run": "a/b"})
    with pytest.raises(
        grid.GridError, match=r"^results path: '../x' must be a relative path inside results/ci"
    ):
        grid.results_path(ci_config(), "../x")
    with pytest.raises(grid.GridError, match=r"^exports.a b: 'a b' is not a name"):
        grid.export_path(ci_config(), "a b")
    config = ci_config()
    config["methods"]["a b"] = config["methods"]["amc"]  # past the schema, which refuses it first
    with pytest.raises(grid.GridError, match=r"^methods.a b: 'a b' is not a name"):
        grid.expand_methods(config)


def test_figure_paths_are_a_png_and_a_pdf_under_figures():
    assert grid.figure_paths("results/ci", "ablation") == [
        Path("results/ci/figures/ablation.png"),
        Path("results/ci/figures/ablation.pdf"),
    ]


def test_a_sweep_may_set_a_key_its_base_does_not_have():
    sweep = {"base": "amc", "parameter": "optim.schedule.min_lr", "values": [0.0], "name": "amc_min{value}"}
    methods = grid.expand_methods(sweep_config(sweep))
    assert methods["amc_min0.0"]["optim"] == {"schedule": {"min_lr": 0.0}} and methods["amc"]["optim"] == {}


def test_the_explainer_ablation_targets_and_their_paths():
    config = ci_config(seeds=[0, 1])
    config["explainers"]["splits"] = []  # the default: every evaluated split but val
    config["benchmarks"]["flickr30k"]["splits"] = ["val", "test"]
    assert grid.explainer_splits(config) == [
        ("flickr30k", "test"),
        ("refcoco+", "testA"),
        ("refcoco+", "testB"),
    ]
    targets = grid.explainer_targets(config)
    explainers = grid.explainer_list(config)
    assert len(targets) == (1 + 2) * 3 * len(explainers)  # albef once, amc two seeds; three splits
    first = targets[0]
    assert first == {
        "method": "albef",
        "seed": 0,
        "benchmark": "flickr30k",
        "split": "test",
        "explainer": explainers[0],
        "path": f"results/ci/eval_explainers/albef/seed0/flickr30k-test-{explainers[0].slug}.json",
    }
    last = targets[-1]
    assert (last["method"], last["seed"], last["benchmark"], last["split"], last["explainer"]) == (
        "amc", 1, "refcoco+", "testB", explainers[-1]
    )  # fmt: skip
    assert grid.parse_explainer_eval_path(last["path"]) == (
        "amc",
        1,
        "refcoco+",
        "testB",
        explainers[-1].slug,
    )
    with pytest.raises(grid.GridError, match="not <method>/seed<k>/<benchmark>-<split>-<explainer>.json"):
        grid.parse_explainer_eval_path("results/ci/eval_explainers/amc/run1/flickr30k-test-gradcam.json")
    listed = grid.resolved_config(config)["explainer_list"]
    assert [(e["slug"], e["text"]) for e in listed] == [(e.slug, str(e)) for e in explainers]


def test_a_non_finite_number_anywhere_in_the_configuration_is_refused():
    config = raw_ci_config()
    config["methods"]["amc"]["objectives"]["amc"]["delta_mean"] = float("nan")
    with pytest.raises(grid.GridError, match="config.methods.amc.objectives.amc.delta_mean"):
        grid.validate_config(config)


@pytest.mark.parametrize(
    ("change", "where"),
    [
        (lambda c: c["table1"]["rows"][0].update(label="a\x07b"), "config.table1.rows[0].label"),
        (lambda c: c["methods"]["amc"].update(optim={"a\nb": 1}), "config.methods.amc.optim (key)"),
    ],
)
def test_a_control_character_in_any_value_or_key_is_refused(change, where):
    config = raw_ci_config()
    change(config)
    with pytest.raises(grid.GridError, match=rf"^{re.escape(where)}: .* holds a control character"):
        grid.validate_config(config)


def test_validation_fills_in_defaults_without_changing_its_input():
    config = raw_ci_config()
    before = json.dumps(config, sort_keys=True)
    validated = grid.validate_config(config)
    assert json.dumps(config, sort_keys=True) == before
    assert validated["methods"]["amc"]["optim"] == {} and "optim" not in config["methods"]["amc"]


def test_an_unreadable_configuration_names_the_file(tmp_path):
    with pytest.raises(AmcError, match="workflow configuration"):
        grid.load_config(str(tmp_path / "missing.yaml"))


def test_a_json_configuration_with_its_grid_is_read_as_it_is(tmp_path):
    resolved = grid.resolved_config(ci_config())
    assert set(resolved["grid"]) == {"albef", "amc", "amc_released"} and resolved["sweep_axes"] == []
    path = tmp_path / "workflow-config.json"
    path.write_text(json.dumps(resolved))
    assert grid.load_config(str(path)) == resolved
    yaml_path = tmp_path / "ci.yaml"
    yaml_path.write_text((REPO / "config/ci.yaml").read_text())
    assert grid.load_config(str(yaml_path)) == resolved
    raw = tmp_path / "raw.json"
    raw.write_text(json.dumps(raw_ci_config()))
    assert grid.load_config(str(raw)) == resolved  # no grid yet: validated and resolved like the YAML


def test_a_schema_error_names_the_key_with_list_positions_and_a_bad_name_says_what_a_name_is():
    with pytest.raises(grid.GridError, match=r"^config\.seeds\[1\]: -1 is less than the minimum of 0"):
        ci_config(seeds=[0, -1])
    with pytest.raises(grid.GridError, match=r"^config\.run: 'a b' is not a name \(a letter or digit, then"):
        ci_config(run="a b")
    # a pattern other than a name's: the schema's own message
    with pytest.raises(grid.GridError, match=r"^config\.sweeps\[0\]\.parameter: 'lr' does not match '"):
        sweep_config({**SWEEP, "parameter": "lr"})


def test_the_schema_and_the_methods_are_copies_a_caller_may_change():
    schema = grid.config_schema()
    schema["properties"].clear()
    assert "methods" in grid.config_schema()["properties"]
    config = ci_config()
    objectives = json.dumps(config["methods"]["amc"]["objectives"], sort_keys=True)
    grid.expand_methods(config)["amc"]["objectives"].clear()
    assert json.dumps(config["methods"]["amc"]["objectives"], sort_keys=True) == objectives != "{}"
