"""The one validator of each record type, the name and path rules, the I/O helpers (Guarantees).

Property-based (hypothesis): whatever a validator accepts is sound, and whatever it refuses is an
AmcError naming the file or field, never another exception.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import stat
import tempfile
import typing
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from amc import grid
from amc.io import (
    NAME_PATTERN,
    AmcError,
    DataError,
    atomic_write_json,
    check_outputs,
    confined,
    is_name,
    read_append_log,
    read_json,
    read_jsonl,
    read_text,
    read_yaml,
)
from amc.records import load_records, record_from_dict, save_records
from amc.result_format import RESULT_FORMAT, read_result, validate_result
from amc.run_config import DEFAULTS, RUN_CONFIG_SCHEMA, RunConfig, load_run_config
from amc.selection import SelectionSplit

REPO = Path(__file__).resolve().parent.parent
# derandomize: the same examples on every run, so the suite is reproducible (False explores new ones)
SETTINGS = settings(
    max_examples=200, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)

# Any JSON value (and the non-finite floats Python's json reads), nested a little.
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(10**12), 10**12)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=6)
)
JSON = st.recursive(
    SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=8,
)  # fmt: skip


def finite(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


# --------------------------------------------------------------------------- records

RECORD = {
    "id": "flickr30k/1/0/0",
    "dataset": "flickr30k",
    "split": "test",
    "image": "images/1.jpg",
    "width": 200,
    "height": 100,
    "phrase": "a man",
    "boxes": [[10, 20, 49.5, 79]],
    "category": "people",
    "image_id": "1",
    "other_boxes": [[0, 0, 5, 5]],
    "captions": [],
}


def sound_box(box) -> bool:
    return (
        isinstance(box, list)
        and len(box) == 4
        and all(isinstance(v, float) and math.isfinite(v) for v in box)
        and box[2] > box[0]
        and box[3] > box[1]
    )


def assert_sound_record(record) -> None:
    for key in ("id", "dataset", "split", "image", "phrase"):
        assert isinstance(getattr(record, key), str) and getattr(record, key).strip(), key
    for key in ("width", "height"):
        value = getattr(record, key)
        assert isinstance(value, int) and not isinstance(value, bool) and value >= 1, key
    assert record.boxes and all(sound_box(b) for b in record.boxes)
    assert all(sound_box(b) for b in record.other_boxes)
    for key in ("category", "image_id"):
        assert getattr(record, key) is None or isinstance(getattr(record, key), str)


@SETTINGS
@given(field=st.sampled_from(sorted(RECORD)), value=JSON, delete=st.booleans())
def test_a_record_is_sound_or_refused_naming_the_field(field, value, delete):
    row = copy.deepcopy(RECORD)
    if delete:
        del row[field]
    else:
        row[field] = value
    try:
        record = record_from_dict(row, "records.jsonl: record 1")
    except DataError as error:
        assert str(error).startswith("records.jsonl: record 1: ")
        return
    assert_sound_record(record)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("boxes", [[0, 0, float("nan"), 5]], "non-finite"),
        ("boxes", [[0, 0, float("inf"), 5]], "non-finite"),
        ("other_boxes", [[0, 0, float("nan"), 5]], "non-finite"),
        ("width", float("nan"), "'width' must be a whole number"),
        ("height", float("inf"), "'height' must be a whole number"),
        ("width", 0, "'width' must be a whole number"),
        ("width", "640", "'width' must be a whole number"),
        ("width", True, "'width' must be a whole number"),
        ("phrase", None, "'phrase' must be a non-empty string, got None"),
        ("phrase", 7, "'phrase' must be a non-empty string"),
        ("id", None, "'id' must be a non-empty string"),
        ("category", 3, "'category' must be a non-empty string"),
    ],
)
def test_record_examples_from_the_review(tmp_path, field, value, message):
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps({**RECORD, field: value}) + "\n")  # json writes NaN / Infinity
    with pytest.raises(DataError, match=message) as error:
        load_records(path)
    assert str(path) in str(error.value)


def test_records_are_checked_before_they_are_written(tmp_path):
    record = record_from_dict(RECORD, "x")
    record.width = 0
    with pytest.raises(DataError, match="'width'"):
        save_records(tmp_path / "out.jsonl", [record])
    assert not (tmp_path / "out.jsonl").exists()


PREPARE_REPORT = {
    "dataset": "vg",
    "split": None,
    "records": 3,
    "skipped": {"empty phrase": 1},
    "left_out": {},
}


@SETTINGS
@given(field=st.sampled_from(sorted(PREPARE_REPORT)), value=JSON, delete=st.booleans())
def test_a_prepare_report_is_sound_or_refused_naming_the_field(field, value, delete):
    from amc.records import prepare_report_path, read_prepare_report, write_prepare_report

    report = copy.deepcopy(PREPARE_REPORT)
    if delete:
        del report[field]
    else:
        report[field] = value
    with tempfile.TemporaryDirectory() as folder:
        records = Path(folder) / "vg-train.jsonl"
        records.write_text("{}\n")
        write_prepare_report(records, report)
        try:
            read = read_prepare_report(records)
        except DataError as error:
            assert str(error).startswith(f"{prepare_report_path(records)}: field ")
            return
    assert read == report
    assert isinstance(read["dataset"], str) and (read["split"] is None or isinstance(read["split"], str))
    assert type(read["records"]) is int and read["records"] >= 0
    for key in ("skipped", "left_out"):
        assert all(type(n) is int and n >= 0 for n in read[key].values())


# --------------------------------------------------------------------------- evaluation results


def result(hits=(True, False, True)) -> dict:
    """A result as amc evaluate writes it (every field the schema requires)."""
    cases = [
        {"id": f"c{i}", "point": [1, 2], "hit": h, "miss": None if h else "background", "category": None}
        for i, h in enumerate(hits)
    ]
    n_hits = sum(hits)
    summary = {
        "benchmark": "flickr30k", "split": "test", "method": "amc", "seed": 0,
        "accuracy": n_hits / len(hits), "n_cases": len(hits), "n_hits": n_hits, "skipped": {},
        "skipped_in_prepare": None, "misses": {"background": len(hits) - n_hits}, "image_res": 384,
        "resize": "pil-bicubic", "max_words": 30, "records": "r.jsonl", "checkpoint": "c.pt",
        "checkpoint_sha256": "0" * 64, "model_config": {}, "code_version": "amc 0", "device": "cpu",
        "created": "2024-01-01T00:00:00+00:00",
    }  # fmt: skip
    return {"format": RESULT_FORMAT, "summary": summary, "cases": cases}


RESULT_PATHS = [("summary", k) for k in ("accuracy", "n_cases", "n_hits", "skipped")] + [
    ("cases", 1, k) for k in ("id", "point", "hit", "miss", "category", "box_hit")
]


@SETTINGS
@given(path=st.sampled_from(RESULT_PATHS), value=JSON)
def test_a_result_is_consistent_or_refused(path, value):
    data = result()
    node = data
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    try:
        checked = validate_result(data, "r.json")
    except DataError as error:
        assert str(error).startswith("r.json: ")
        return
    hits = [c["hit"] for c in checked["cases"]]
    assert all(isinstance(h, bool) for h in hits)
    assert all(
        c["miss"] is None if c["hit"] else c["miss"] in ("other_object", "background")
        for c in checked["cases"]
    )
    assert len({c["id"] for c in checked["cases"]}) == len(hits)
    summary = checked["summary"]
    assert summary["n_cases"] == len(hits) and summary["n_hits"] == sum(hits)
    assert finite(summary["accuracy"]) and summary["accuracy"] == pytest.approx(sum(hits) / len(hits))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d["cases"][0].update(hit="false"), r"data.cases\[0\].hit must be boolean"),
        (lambda d: d["cases"][1].update(hit=0), r"data.cases\[1\].hit must be boolean"),
        (lambda d: d.update(cases=[]), r"data.cases must contain at least 1 items"),
        (
            lambda d: d["summary"].update(accuracy=float("nan")),
            "result.summary.accuracy is nan, not a finite number",
        ),
        (lambda d: d["summary"].update(n_hits=3), "summary says 3 hits"),
        (
            lambda d: d["cases"][0].update(point=[float("inf"), 1]),
            r"result.cases\[0\].point\[0\] is inf, not a finite",
        ),
        (lambda d: d["cases"][0].update(point=[1.5, 1]), r"data.cases\[0\].point\[0\] must be integer"),
        (lambda d: d["cases"].append(dict(d["cases"][0])), "appears more than once"),
    ],
)
def test_result_examples_from_the_review(tmp_path, change, message):
    data = result()
    change(data)
    path = tmp_path / "eval" / "amc" / "seed0" / "flickr30k-test.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(data))
    with pytest.raises(DataError, match=message):
        read_result(path)
    # The reports read results through the same validator.
    from amc.report import tables

    with pytest.raises(DataError, match=message):
        tables.load_eval(path)


# --------------------------------------------------------------------------- run configuration

BASE = ["model_config=m.yaml", "vocab=v", "data.path=r.jsonl"]


def schema_keys(schema: dict, prefix: str = "") -> set[str]:
    keys = set()
    for key, sub in schema.get("properties", {}).items():
        dotted = f"{prefix}{key}"
        keys.add(dotted)
        if "properties" in sub and dotted != "method.objectives":
            keys |= schema_keys(sub, dotted + ".")
    return keys


def default_keys(node: dict, prefix: str = "") -> set[str]:
    keys = set()
    for key, value in node.items():
        dotted = f"{prefix}{key}"
        keys.add(dotted)
        if isinstance(value, dict) and dotted != "method.objectives":
            keys |= default_keys(value, dotted + ".")
    return keys


def field_keys(cls: type, prefix: str = "") -> set[str]:
    keys = set()
    for field in dataclasses.fields(cls):
        dotted = f"{prefix}{field.name}"
        keys.add(dotted)
        if dataclasses.is_dataclass(nested := typing.get_type_hints(cls)[field.name]):
            keys |= field_keys(nested, dotted + ".")
    return keys


def test_every_run_configuration_key_has_a_type():
    assert default_keys(DEFAULTS) == schema_keys(RUN_CONFIG_SCHEMA) == field_keys(RunConfig)
    split = RUN_CONFIG_SCHEMA["properties"]["selection"]["properties"]["splits"]["items"]
    assert set(split["properties"]) == {f.name for f in dataclasses.fields(SelectionSplit)}


def test_the_typed_configuration_gives_back_the_dict_it_was_built_from(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(
        "method: {name: mine, objectives: {itc: {weight: 2.0}, amc: null}}\n"
        "selection: {splits: [{name: flickr30k, records: f.jsonl, image_res: 32, max_words: 30, resize: auto}]}\n"
    )
    config = load_run_config(
        str(path), [*BASE, "optim.max_steps=7", "data.augment.color_jitter=[0, 0.1, 0.2, 0.3]"]
    )
    expected = copy.deepcopy(DEFAULTS)
    expected.update(model_config="m.yaml", vocab="v", selection=yaml.safe_load(path.read_text())["selection"])
    expected["data"]["path"] = "r.jsonl"
    expected["data"]["augment"]["color_jitter"] = [0, 0.1, 0.2, 0.3]
    expected["method"] = {"name": "mine", "objectives": {"itc": {"weight": 2.0}, "amc": None}}
    expected["optim"]["max_steps"] = 7
    assert config.to_dict() == expected
    assert RunConfig.from_dict(config.to_dict()) == config
    given = config.to_dict()
    typed = RunConfig.from_dict(given)
    given["method"]["objectives"]["itc"]["weight"] = 9.0  # the typed copy shares nothing with its input
    assert typed.method.objectives["itc"] == {"weight": 2.0}
    assert list(config.to_dict()) == list(DEFAULTS)  # config.resolved.yaml keeps the documented order
    assert (config.optim.max_steps, config.selection.splits[0].max_words, config.method.name) == (
        7,
        30,
        "mine",
    )
    # A configuration stored before the typed one (a selection split without its optional keys) is this one.
    split = {"name": "flickr30k", "records": "f.jsonl"}
    typed = load_run_config(None, [*BASE, f"selection.splits=[{json.dumps(split)}]"])
    stored = {**typed.to_dict(), "selection": {"splits": [split]}}
    assert stored != typed.to_dict()
    assert typed.matches(stored) and not typed.matches({**stored, "seed": 1}) and not typed.matches(None)


# (key, accepts): an independent statement of what each numeric key takes.
WHOLE = (int,)
RANGES = {
    "optim.max_steps": lambda v: v is None or (type(v) in WHOLE and v >= 1),
    "optim.epochs": lambda v: type(v) in WHOLE and v >= 1,
    "optim.batch_size": lambda v: type(v) in WHOLE and v >= 1,
    "optim.grad_accum": lambda v: type(v) in WHOLE and v >= 1,
    "optim.warmup_steps": lambda v: type(v) in WHOLE and v >= 0,
    "optim.lr": lambda v: finite(v) and v > 0,
    "optim.weight_decay": lambda v: finite(v) and v >= 0,
    "alpha": lambda v: finite(v) and 0 <= v <= 1,
    "seed": lambda v: type(v) in WHOLE and v >= 0,
    "num_workers": lambda v: type(v) in WHOLE and v >= 0,
    "log_every": lambda v: type(v) in WHOLE and v >= 1,
    "save_every_steps": lambda v: v is None or (type(v) in WHOLE and v >= 1),
    "data.image_res": lambda v: type(v) in WHOLE and v >= 1,
    "data.augment.hflip": lambda v: finite(v) and 0 <= v <= 1,
    "method.objectives.amc.delta_mean": lambda v: finite(v) and v >= 0,
    "method.objectives.mlm.probability": lambda v: finite(v) and 0 < v <= 1,
}


@SETTINGS
@given(key=st.sampled_from(sorted(RANGES)), value=SCALARS)
def test_run_configuration_numbers_are_checked_where_they_enter(key, value):
    override = f"{key}={json.dumps(value)}"  # the command line parses values as YAML (JSON is YAML)
    try:
        config = load_run_config(None, [*BASE, override])
    except AmcError as error:
        assert not RANGES[key](value), (override, str(error))
        assert key in str(error) and "command line" in str(error)
        return
    assert RANGES[key](value), override
    node = config.to_dict()
    for part in key.split("."):
        node = node[part]
    assert node == value


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optim.lr=abc", r"command line \(optim.lr=abc\): optim.lr: 'abc' is not of type 'number'"),
        ("optim.max_steps=-1", "optim.max_steps: -1 is less than the minimum of 1"),
        ("optim.max_steps=0", "optim.max_steps: 0 is less than the minimum of 1"),
        ("optim.lr=.nan", "optim.lr: nan is not a finite number"),
        ("optim=3", "optim: 3 is not of type 'object'"),
        ("method.objectives.amc.weight=heavy", "method.objectives.amc.weight"),
        ("optim.lr=[1", "not a YAML value"),
    ],
)
def test_run_configuration_examples_name_the_flag_and_key(override, message):
    with pytest.raises(AmcError, match=message):
        load_run_config(None, [*BASE, override])


def test_run_configuration_errors_name_the_file(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("optim:\n  batch_size: 0\n")
    with pytest.raises(AmcError, match=rf"{path}: optim.batch_size: 0 is less than the minimum of 1"):
        load_run_config(str(path), BASE)
    path.write_text("optim: [unclosed\n")
    with pytest.raises(DataError, match=rf"{path}:2: not valid YAML"):
        load_run_config(str(path), BASE)
    path.write_bytes(b"seed: 1\n\xff\xfe\n")
    with pytest.raises(DataError, match=rf"{path}:2: not UTF-8 text"):
        load_run_config(str(path), BASE)
    with pytest.raises(AmcError, match="'model_config' is required"):
        load_run_config(None, ["vocab=v", "data.path=r"])


# --------------------------------------------------------------------------- workflow configuration


def test_the_schema_and_the_code_share_one_name_pattern():
    schema = yaml.safe_load((REPO / "amc/resources/config.schema.yaml").read_text())
    assert schema["$defs"]["name"]["pattern"] == NAME_PATTERN
    assert schema["properties"]["run"]["$ref"] == "#/$defs/name"


@SETTINGS
@given(name=st.text(alphabet="ab0._+-/ \n$;'\"", max_size=8))
def test_a_name_is_one_path_component_that_stays_in_place(name):
    if is_name(name):
        assert "/" not in name and ".." not in name and "\n" not in name and name[0].isalnum()
        assert Path("results", name).resolve().parent == Path("results").resolve()


def demo_config() -> dict:
    return yaml.safe_load((REPO / "config/demo.yaml").read_text())


def numeric_places(node, path=()):
    """(path, value) of every number of a configuration, outside the free-form ``overrides`` and
    ``objectives`` (values for ``amc train``, which checks them against its own schema,
    RUN_CONFIG_SCHEMA above, before it writes anything)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key not in ("overrides", "objectives"):
                yield from numeric_places(value, (*path, key))
    elif isinstance(node, list):
        for number, value in enumerate(node):
            yield from numeric_places(value, (*path, number))
    elif isinstance(node, int | float) and not isinstance(node, bool):
        yield path, node


def whole(minimum: int):
    return lambda v: type(v) is int and v >= minimum


# An independent statement of what the numbers of the workflow configuration take, by key.
WORKFLOW_NUMBERS = {
    "seed": whole(0), "seeds": whole(0), "workers": whole(1), "threads": whole(1), "gpus": whole(0),
    "num_workers": whole(0), "mem_mb": whole(1), "runtime": whole(1), "image_res": whole(1),
    "n_boot": whole(1), "examples": whole(1),
}  # fmt: skip
WORKFLOW_PLACES = [
    (path, value)
    for name in ("demo.yaml", "config.yaml")
    for path, value in numeric_places(
        grid.validate_config(yaml.safe_load((REPO / "config" / name).read_text()))
    )
]


@SETTINGS
@given(
    config_name=st.sampled_from(["demo.yaml", "config.yaml"]),
    place=st.sampled_from(sorted({path for path, _ in WORKFLOW_PLACES}, key=str)),
    value=SCALARS,
)
def test_workflow_numbers_are_checked_at_start_up(config_name, place, value):
    config = grid.validate_config(yaml.safe_load((REPO / "config" / config_name).read_text()))
    node = config
    for part in place[:-1]:
        if not isinstance(node, dict | list) or (isinstance(node, dict) and part not in node):
            return  # a place of the other configuration
        if isinstance(node, list) and part >= len(node):
            return
        node = node[part]
    if not isinstance(node, dict | list) or (isinstance(node, dict) and place[-1] not in node):
        return
    if isinstance(node, list) and place[-1] >= len(node):
        return
    node[place[-1]] = value
    try:
        grid.check_grid(grid.resolve_paths(grid.validate_config(config)))
    except grid.GridError as error:
        assert str(error).startswith(("config", "sweeps", "methods", "exports", "table1")), str(error)
        return
    key = next(str(p) for p in reversed(place) if isinstance(p, str))
    if key in WORKFLOW_NUMBERS:
        assert WORKFLOW_NUMBERS[key](value) or (value is None and key == "seed"), (place, value)
    else:  # a sweep value: any hyperparameter value (amc train checks its type), never NaN or infinity
        assert value is not None and not (isinstance(value, float) and not math.isfinite(value)), (
            place,
            value,
        )


@pytest.mark.parametrize("value", ["..", "0.2/../../x", "x/y", "a b", "$(id)"])
def test_sweep_values_never_make_a_name_outside_results(value):
    config = grid.validate_config(demo_config())
    config["sweeps"][0]["values"].append(value)
    with pytest.raises(grid.GridError, match=r"sweeps\[0\] \(value .*\): .* is not a name"):
        grid.expand_methods(grid.resolve_paths(config))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda c: c.update(run=".."), "config.run"),
        (lambda c: c["methods"].update({"..": {"label": "x", "kind": "none"}}), "config.methods"),
        (lambda c: c["methods"].update({"a..b": {"label": "x", "kind": "none"}}), "config.methods"),
        (lambda c: c["data"].update(raw_dir="data/x\ny"), "control character"),
        (lambda c: c.update(exports={"../x": {"method": "amc", "layout": "albef"}}), "config.exports"),
        (lambda c: c["pretrain"].update(out_dir="elsewhere/pretrain"), "pretrain.out_dir"),
        (lambda c: c["qualitative"].update(split="../../x"), "qualitative"),
        (lambda c: c["evaluate"].update(extra_args="--limit 5; rm -rf ~"), "extra_args"),
    ],
)
def test_workflow_names_and_paths_are_checked_at_start_up(change, message):
    config = demo_config()
    change(config)
    with pytest.raises(grid.GridError, match=message):
        grid.check_grid(grid.resolve_paths(grid.validate_config(config)))


@SETTINGS
@given(parts=st.lists(st.sampled_from(["a", "b", ".", "..", "", "/", "c.d"]), min_size=1, max_size=6))
def test_confined_paths_stay_inside_their_root(parts):
    relative = "/".join(parts)
    try:
        path = confined("root", relative, "test")
    except AmcError:
        return
    assert os.path.normpath(path).startswith("root")
    assert not os.path.normpath(path).startswith("root/..")


# --------------------------------------------------------------------------- reading and writing files


def test_every_text_reader_names_the_file_and_line_of_undecodable_bytes(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_bytes(b'{"a": 1}\n{"b": "\xff"}\n')
    for reader in (read_text, read_json, read_jsonl, read_yaml, read_append_log):
        with pytest.raises(DataError, match=rf"{path}:2: not UTF-8 text \(byte 0xff"):
            reader(path)
    with pytest.raises(DataError, match="is a folder"):
        read_text(tmp_path)
    with pytest.raises(DataError, match="not found"):
        read_json(tmp_path / "missing.json")


def test_a_torn_last_line_of_a_log_is_dropped_with_a_warning(tmp_path, caplog):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n{"step": 2}\n{"step": 3, "lo')
    assert read_append_log(path) == [{"step": 1}, {"step": 2}]
    assert "torn last line" in caplog.text
    path.write_text('{"step": 1}\n{"st\n{"step": 3}\n')  # not the last line: damage, not a crash
    with pytest.raises(DataError, match=rf"{path}:2: not valid JSON"):
        read_append_log(path)


def test_the_training_curves_read_a_log_with_a_torn_last_line(tmp_path, caplog):
    from amc.report.figures import load_metrics

    path = tmp_path / "train" / "amc" / "seed0" / "metrics.jsonl"
    path.parent.mkdir(parents=True)
    path.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "lo')  # a run killed (or still writing)
    frame = load_metrics(tmp_path)
    assert frame["step"].tolist() == [1] and "torn last line" in caplog.text


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_written_files_honour_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        atomic_write_json(tmp_path / "a.json", {"x": 1})
        with open(tmp_path / "plain", "w"):
            pass
    finally:
        os.umask(old)
    mode = stat.S_IMODE((tmp_path / "a.json").stat().st_mode)
    assert mode == 0o666 & ~umask == stat.S_IMODE((tmp_path / "plain").stat().st_mode)


def test_an_output_is_never_an_input_and_its_place_is_checked_first(tmp_path):
    records = tmp_path / "r.jsonl"
    records.write_text("{}\n")
    with pytest.raises(AmcError, match=r"--out .*r.jsonl: is also --records"):
        check_outputs({"--out": records}, {"--records": records})
    link = tmp_path / "link.jsonl"
    link.symlink_to(records)
    with pytest.raises(AmcError, match="is also --records"):
        check_outputs({"--out": link}, {"--records": records})
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(AmcError, match=r"--out .*: .*file is a file, not a folder"):
        check_outputs({"--out": blocker / "sub" / "x.json"})
    with pytest.raises(AmcError, match="is a folder; give a file name"):
        check_outputs({"--out": tmp_path})
    with pytest.raises(AmcError, match="is a file, not a folder"):
        check_outputs({}, folders={"--out": blocker})
    with pytest.raises(AmcError, match="two outputs would be one file"):
        check_outputs({"--out": tmp_path / "x.json", "--heatmaps": tmp_path / "." / "x.json"})
    check_outputs({"--out": tmp_path / "new" / "x.json"}, {"--records": records})
