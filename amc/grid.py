"""The method grid: from the workflow configuration to the list of runs.

Used by the Snakemake workflow (``workflow/rules/common.smk``) to know which
jobs exist, and by ``amc report`` and the notebook to know what the jobs were.
The configuration (``config/*.yaml``, validated against
``amc/resources/config.schema.yaml``) declares

* ``methods``: name -> {label, kind: none|finetune|released, objectives, optim, data, overrides,
  seeds, checkpoints};
* ``sweeps``: each varies one parameter of a base method over values and adds one
  method per value, named by its pattern (``amc_dmean{value}`` -> ``amc_dmean0.05``).
  A value equal to the base method's own value adds nothing: the base method
  stands for it (no duplicate training), and the ablation plot puts it there.

A method of kind ``none`` is the init checkpoint evaluated as it is; a method of kind
``released`` is a given checkpoint per benchmark (the authors' ``best_flickr.pth``,
``best_refcoco.pth``) evaluated as it is. Neither is trained, so each is evaluated once,
under the first seed (its result does not depend on a seed).
"""

from __future__ import annotations

import copy
import functools
import json
import posixpath
import re
from pathlib import Path
from typing import Any, NamedTuple

import yaml

from amc import resources
from amc.io import (
    NAME_PATTERN,
    NAME_RULE,
    AmcError,
    DataError,
    confined,
    find_non_finite,
    import_jsonschema,
    is_name,
    place_text,
    read_yaml,
    schema_validator,
)
from amc.selection import best_checkpoint_name

PLACEHOLDERS = ("run", "raw_dir", "records_dir")
# Kinds evaluated as they are: no training, no seeds (one evaluation, under the first seed).
UNTRAINED_KINDS = ("none", "released")
# data.manifest of a real-data run that names none: the manifest shipped with the package
DEFAULT_MANIFEST = str(resources.resource(resources.MANIFEST))


class GridError(ValueError):
    """A configuration that passes the schema but does not make a grid."""


def _check_name(value: Any, where: str) -> str:
    """A method, run or export name: one path component (amc.io.NAME_PATTERN, the schema's $defs.name)."""
    if not is_name(value):
        raise GridError(f"{where}: {value!r} is not a name ({NAME_RULE})")
    return value


def run_dir(config: dict) -> str:
    """``results/<run>``: the folder of every file a run writes."""
    return f"results/{_check_name(config['run'], 'run')}"


def results_path(config: dict, relative: str) -> str:
    """``results/<run>/<relative>``, refusing anything that would leave the run's results folder."""
    try:
        return confined(run_dir(config), relative, "results path").as_posix()
    except AmcError as error:
        raise GridError(str(error)) from None


# ------------------------------------------------------------------ the paths of a run's files
#
# Each file pattern of a run is written out here once. The Snakemake rules call these with wildcard
# text for some parts ("{method}", "{seed}"), the reports parse what they wrote, and "*" for every
# part makes the glob that finds them.

EVAL_DIR = "eval"
EXPLAINER_EVAL_DIR = "eval_explainers"
TABLES_DIR = "tables"
TABLE_SUFFIXES = ("csv", "md", "tex")
# in the run folder of amc train (amc.train.RunFolder), and the metrics' copy under train/
FINAL_CHECKPOINT = "checkpoint_final.pt"
TRAIN_METRICS = "metrics.jsonl"
FIGURES_DIR = "figures"
FIGURE_SUFFIXES = ("png", "pdf")
# the run's configuration as the reports read it (amc report config writes it)
RUN_CONFIG_FILE = "workflow-config.json"


class EvalKey(NamedTuple):
    """What an evaluation result file is of: the parts of its :func:`eval_file` path."""

    method: str
    seed: int
    benchmark: str
    split: str


def records_path(config: dict, benchmark: str, split: str) -> str:
    """``<records_dir>/<benchmark>-<split>.jsonl``: the records of a split (``vg``, ``train``: fine-tuning)."""
    return f"{config['data']['records_dir']}/{benchmark}-{split}.jsonl"


def checkpoint_dir(config: dict, method: str, seed: int | str) -> str:
    """``results/<run>/checkpoints/<method>/seed<k>``: the run folder of ``amc train``."""
    return results_path(config, f"checkpoints/{method}/seed{seed}")


def final_checkpoint_path(config: dict, method: str, seed: int | str) -> str:
    """The checkpoint ``amc train`` writes at the end of a run."""
    return f"{checkpoint_dir(config, method, seed)}/{FINAL_CHECKPOINT}"


def best_checkpoint_path(config: dict, method: str, seed: int | str, benchmark: str) -> str:
    """The run's best epoch on the benchmark's val split (:func:`amc.selection.best_checkpoint_name`)."""
    return f"{checkpoint_dir(config, method, seed)}/{best_checkpoint_name(benchmark)}"


def train_metrics_file(method: str, seed: int | str) -> str:
    """``train/<method>/seed<k>/metrics.jsonl``, relative to the run's results folder."""
    return f"train/{method}/seed{seed}/{TRAIN_METRICS}"


# Every run's metrics, relative to the run's results folder (the training curves read them).
TRAIN_METRICS_GLOB = train_metrics_file("*", "*")


def train_metrics_path(config: dict, method: str, seed: int | str) -> str:
    """``results/<run>/train/<method>/seed<k>/metrics.jsonl``: a run's metrics, copied out of its folder."""
    return results_path(config, train_metrics_file(method, seed))


def eval_file(method: str, seed: int | str, benchmark: str, split: str) -> str:
    """``eval/<method>/seed<k>/<benchmark>-<split>.json``, relative to the run's results folder."""
    return f"{EVAL_DIR}/{method}/seed{seed}/{benchmark}-{split}.json"


# Every evaluation result of a run, relative to its results folder.
EVAL_GLOB = eval_file("*", "*", "*", "*")


def eval_path(config: dict, method: str, seed: int | str, benchmark: str, split: str) -> str:
    """``results/<run>/eval/<method>/seed<k>/<benchmark>-<split>.json``: one ``amc evaluate`` result."""
    return results_path(config, eval_file(method, seed, benchmark, split))


def parse_eval_path(path: str | Path) -> EvalKey:
    """The (method, seed, benchmark, split) of an :func:`eval_file` path, the inverse of it; a
    :class:`DataError` when the path is not one. The path is authoritative, not the file's content."""
    path = Path(path)
    seed_text = path.parent.name.removeprefix("seed")
    if not seed_text.isdigit():
        raise DataError(f"{path}: not under {EVAL_DIR}/<method>/seed<k>/")
    benchmark, _, split = path.stem.rpartition("-")
    return EvalKey(path.parent.parent.name, int(seed_text), benchmark, split)


def table_paths(run_dir: str | Path, name: str, suffixes: tuple[str, ...] = TABLE_SUFFIXES) -> list[Path]:
    """``<run_dir>/tables/<name>.{csv,md,tex}``: one table of ``amc report`` (in ``suffixes`` order)."""
    return [Path(run_dir) / TABLES_DIR / f"{name}.{suffix}" for suffix in suffixes]


def figure_paths(run_dir: str | Path, name: str) -> list[Path]:
    """``<run_dir>/figures/<name>.png`` and ``.pdf``: one figure of ``amc report``."""
    return [Path(run_dir) / FIGURES_DIR / f"{name}.{suffix}" for suffix in FIGURE_SUFFIXES]


def _format_path(value: str, context: dict[str, str]) -> str:
    for key in PLACEHOLDERS:
        value = value.replace("{" + key + "}", context[key])
    return value


def resolve_paths(config: dict) -> dict:
    """Return a copy of ``config`` with ``{run}``, ``{raw_dir}``, ``{records_dir}`` filled in paths."""
    config = copy.deepcopy(config)
    context = {"run": config["run"]}
    data = config["data"]
    if data.get("manifest") is None and data["source"] == "real":
        data["manifest"] = DEFAULT_MANIFEST  # the synthetic benchmark needs none unless it names one
    data["raw_dir"] = data["raw_dir"].replace("{run}", config["run"])
    context["raw_dir"] = data["raw_dir"]
    data["records_dir"] = _format_path(data["records_dir"], {**context, "records_dir": ""})
    context["records_dir"] = data["records_dir"]

    def walk(node: Any) -> Any:
        if isinstance(node, str):
            return _format_path(node, context)
        if isinstance(node, dict):
            return {key: walk(value) for key, value in node.items()}
        if isinstance(node, list):
            return [walk(value) for value in node]
        return node

    return walk(config)


def _get_dotted(mapping: dict, dotted: str) -> Any:
    node: Any = mapping
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _set_dotted(mapping: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = mapping
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value


def value_text(value: Any) -> str:
    """A sweep value as it appears in a method name: 0.05 -> '0.05', 1.0 -> '1.0'."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def expand_methods(config: dict) -> dict[str, dict]:
    """Every method of the grid (declared ones, then sweep-generated ones), fully specified.

    ``config`` is validated (:func:`validate_config` filled in the schema's defaults: a method's
    ``objectives``, ``optim``, ``data``, ``overrides`` and ``checkpoints`` are there, ``{}`` by
    default). Each entry gains ``seeds`` (resolved; one seed for the untrained kinds none and
    released), ``init_checkpoint`` (resolved) and ``sweep`` (None, or {base, parameter, symbol, value}).
    """
    declared = config["methods"]
    seeds = list(config["seeds"])
    methods: dict[str, dict] = {}
    for name, spec in declared.items():
        _check_name(name, f"methods.{name}")
        entry = copy.deepcopy(spec)
        entry["seeds"] = list(entry.get("seeds") or seeds)
        entry["init_checkpoint"] = entry.get("init_checkpoint") or config["init_checkpoint"]
        entry["sweep"] = None
        methods[name] = entry

    for number, sweep in enumerate(config.get("sweeps") or []):
        base_name = sweep["base"]
        if base_name not in declared:
            raise GridError(f"sweeps[{number}]: base method {base_name!r} is not in methods")
        base = methods[base_name]
        if base["kind"] != "finetune":
            raise GridError(f"sweeps[{number}]: base method {base_name!r} is not a fine-tuning method")
        base_value = _get_dotted(base, sweep["parameter"])
        symbol = sweep_symbol(sweep)
        for value in sweep["values"]:
            if value == base_value:
                continue  # the base method itself
            name = _check_name(
                sweep["name"].replace("{value}", value_text(value)), f"sweeps[{number}] (value {value!r})"
            )
            if name in methods:
                raise GridError(f"sweeps[{number}]: method name {name!r} already exists")
            entry = copy.deepcopy(declared[base_name])
            _set_dotted(entry, sweep["parameter"], value)
            entry["label"] = (
                sweep["label"]
                .replace("{base_label}", base["label"])
                .replace("{symbol}", symbol)
                .replace("{value}", value_text(value))
            )
            entry["seeds"] = list(sweep.get("seeds") or base["seeds"])
            entry["init_checkpoint"] = base["init_checkpoint"]
            entry["sweep"] = {
                "base": base_name,
                "parameter": sweep["parameter"],
                "symbol": symbol,
                "value": value,
            }
            methods[name] = entry

    for entry in methods.values():
        if entry["kind"] in UNTRAINED_KINDS:
            entry["seeds"] = entry["seeds"][:1]
    return methods


def sweep_symbol(sweep: dict) -> str:
    """A sweep's axis label: its ``symbol``, or else the last part of its dotted ``parameter``."""
    return sweep["symbol"] or sweep["parameter"].split(".")[-1]


def sweep_axes(config: dict) -> list[dict]:
    """One entry per sweep: {base, parameter, symbol, points: [{value, method}]} sorted by value."""
    methods = expand_methods(config)
    axes = []
    for sweep in config.get("sweeps") or []:
        base = sweep["base"]
        symbol = sweep_symbol(sweep)
        points = []
        base_value = _get_dotted(methods[base], sweep["parameter"])
        for value in sweep["values"]:
            if value == base_value:
                points.append({"value": value, "method": base})
            else:
                points.append({"value": value, "method": sweep["name"].replace("{value}", value_text(value))})
        if base_value is not None and base_value not in sweep["values"]:
            points.append({"value": base_value, "method": base})
        points.sort(key=lambda p: (isinstance(p["value"], str), p["value"]))
        axes.append({"base": base, "parameter": sweep["parameter"], "symbol": symbol, "points": points})
    return axes


def _flatten(prefix: str, node: Any) -> list[tuple[str, Any]]:
    if isinstance(node, dict) and node:
        items: list[tuple[str, Any]] = []
        for key, value in node.items():
            items.extend(_flatten(f"{prefix}.{key}", value))
        return items
    return [(prefix, node)]


def override_value(value: Any) -> str:
    """A value as ``amc train`` parses it (YAML): JSON for anything YAML could misread."""
    if isinstance(value, str):
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError:
            return json.dumps(value)
        return value if parsed == value else json.dumps(value)
    return json.dumps(value)


def train_overrides(config: dict, method: str, seed: int) -> list[str]:
    """The ``key=value`` arguments of ``amc train`` for one method and seed.

    Order: the workflow's paths, the run-wide fine-tuning overrides, then the
    method's objectives, optim, data and free overrides (later ones win).
    """
    methods = expand_methods(config)
    spec = methods[method]
    pairs: list[tuple[str, Any]] = [
        ("model_config", config["model_config"]),
        ("vocab", config["vocab"]),
        ("init_checkpoint", spec["init_checkpoint"]),
        ("data.kind", "records"),
        ("data.path", records_path(config, "vg", "train")),
        ("seed", seed),
        ("method.name", method),
    ]
    splits = selection_splits(config)
    if splits:
        pairs.append(("selection.splits", splits))
    pairs += list((config["finetune"].get("overrides") or {}).items())
    pairs += _flatten("method.objectives", spec["objectives"]) if spec["objectives"] else []
    pairs += _flatten("optim", spec["optim"]) if spec["optim"] else []
    pairs += _flatten("data", spec["data"]) if spec["data"] else []
    pairs += list(spec["overrides"].items())
    return [f"{key}={override_value(value)}" for key, value in pairs]


def method_data_path(config: dict, method: str) -> str:
    """The training data file of a method (records by default, captions for VMRM-style)."""
    spec = expand_methods(config)[method]
    return spec["data"].get("path") or records_path(config, "vg", "train")


def selection_benchmarks(config: dict) -> list[str]:
    """Benchmarks whose best epoch is selected on their ``val`` split (``finetune.select_best``)."""
    if not config["finetune"].get("select_best"):
        return []
    return [name for name, spec in config["benchmarks"].items() if "val" in spec["splits"]]


def selection_splits(config: dict) -> list[dict]:
    """The ``selection.splits`` of the fine-tuning runs (amc.selection), [] when off.

    A benchmark's ``resize`` goes along when the configuration sets one (else the benchmark's own).
    """
    splits = []
    for name in selection_benchmarks(config):
        benchmark = config["benchmarks"][name]
        split = {
            "name": name,
            "records": records_path(config, name, "val"),
            "image_res": benchmark["image_res"],
        }
        if benchmark.get("resize"):
            split["resize"] = benchmark["resize"]
        splits.append(split)
    return splits


def checkpoint_path(config: dict, method: str, seed: int, benchmark: str | None = None) -> str:
    """The checkpoint a method is evaluated with on ``benchmark``.

    Kind none: its init checkpoint. Kind released: its checkpoint for the benchmark (``checkpoints``).
    Fine-tuned: the run's best epoch on the benchmark's val split when ``finetune.select_best`` is
    on and the benchmark has one (as the released models were chosen), else the final checkpoint.
    """
    spec = expand_methods(config)[method]
    if spec["kind"] == "none":
        return spec["init_checkpoint"]
    if spec["kind"] == "released":
        if benchmark not in spec["checkpoints"]:
            raise GridError(f"methods.{method}.checkpoints: no checkpoint for benchmark {benchmark!r}")
        return spec["checkpoints"][benchmark]
    if benchmark is not None and benchmark in selection_benchmarks(config):
        return best_checkpoint_path(config, method, seed, benchmark)
    return final_checkpoint_path(config, method, seed)


def export_path(config: dict, name: str) -> str:
    """Where the export ``name`` (config ``exports``) is written."""
    return results_path(config, f"exports/{_check_name(name, f'exports.{name}')}.pth")


def export_source(config: dict, name: str) -> str:
    """The checkpoint the export ``name`` is made from: its method's, for its seed and benchmark."""
    spec = config["exports"][name]
    seed = spec.get("seed")
    if seed is None:
        seed = expand_methods(config)[spec["method"]]["seeds"][0]
    return checkpoint_path(config, spec["method"], seed, spec.get("benchmark"))


def eval_targets(config: dict) -> list[dict]:
    """Every evaluation of the grid: {method, seed, benchmark, split, path}."""
    targets = []
    for method, spec in expand_methods(config).items():
        for seed in spec["seeds"]:
            for benchmark, bench in config["benchmarks"].items():
                for split in bench["splits"]:
                    targets.append(
                        {
                            "method": method,
                            "seed": seed,
                            "benchmark": benchmark,
                            "split": split,
                            "path": eval_path(config, method, seed, benchmark, split),
                        }
                    )
    return targets


# ------------------------------------------------------------------ the explainer ablation


def explainers_enabled(config: dict) -> bool:
    return bool((config.get("explainers") or {}).get("enabled"))


def explainer_list(config: dict) -> list:
    """The explainers of the ablation (:class:`amc.explainers.Explainer`, resolved on the run's model
    config): ``explainers.explainers``, then GradCAM at ``explainers.layers`` (``all``: every fusion
    layer), duplicates dropped (``gradcam`` is GradCAM at the model's ``gradcam_layer``)."""
    from amc.explainers import parse_explainers
    from amc.io import AmcError
    from amc.models.config import ModelConfig

    spec = config["explainers"]
    try:
        model = ModelConfig.from_file(config["model_config"])
        layers = model.fusion_layers if spec["layers"] == "all" else spec["layers"]
        return parse_explainers([*spec["explainers"], *(f"gradcam:layer={k}" for k in layers)], model)
    except AmcError as error:
        raise GridError(f"explainers: {error}") from None


def explainer_splits(config: dict) -> list[tuple[str, str]]:
    """(benchmark, split) of the explainer ablation: ``explainers.splits``, by default every split but val."""
    splits = config["explainers"].get("splits")
    if splits:
        return [(entry["benchmark"], entry["split"]) for entry in splits]
    return [(b, s) for b, spec in config["benchmarks"].items() for s in spec["splits"] if s != "val"]


def explainer_eval_path(config: dict, method: str, seed, benchmark: str, split: str, slug: str) -> str:
    """``results/<run>/eval_explainers/<method>/seed<k>/<benchmark>-<split>-<explainer slug>.json``."""
    return results_path(config, f"{EXPLAINER_EVAL_DIR}/{method}/seed{seed}/{benchmark}-{split}-{slug}.json")


def parse_explainer_eval_path(path: str | Path) -> tuple[str, int, str, str, str]:
    """(method, seed, benchmark, split, explainer slug) of an :func:`explainer_eval_path`
    (benchmark and split names hold no ``-``; the slug may)."""
    path = Path(path)
    parts = path.stem.split("-", 2)
    if len(parts) != 3 or not path.parent.name.startswith("seed"):
        raise GridError(f"{path}: not <method>/seed<k>/<benchmark>-<split>-<explainer>.json")
    benchmark, split, slug = parts
    return path.parent.parent.name, int(path.parent.name.removeprefix("seed")), benchmark, split, slug


def explainer_targets(config: dict) -> list[dict]:
    """Every evaluation of the explainer ablation: {method, seed, benchmark, split, explainer, path};
    [] when ``explainers.enabled`` is off."""
    if not explainers_enabled(config):
        return []
    methods = expand_methods(config)
    explainers = explainer_list(config)
    return [
        {
            "method": method,
            "seed": seed,
            "benchmark": benchmark,
            "split": split,
            "explainer": explainer,
            "path": explainer_eval_path(config, method, seed, benchmark, split, explainer.slug),
        }
        for method in config["explainers"]["methods"]
        for seed in methods[method]["seeds"]
        for benchmark, split in explainer_splits(config)
        for explainer in explainers
    ]


def _is_evaluated(config: dict, benchmark: str, split: str) -> bool:
    """Whether the run evaluates ``split`` of ``benchmark`` (``benchmarks.<name>.splits``)."""
    bench = config["benchmarks"].get(benchmark)
    return bench is not None and split in bench["splits"]


def _check_explainers(config: dict, methods: dict) -> None:
    spec = config.get("explainers") or {}
    if not spec.get("enabled"):
        return
    for name in spec["methods"]:
        if name not in methods:
            raise GridError(f"explainers.methods: method {name!r} is not in methods ({', '.join(methods)})")
    reference = spec.get("reference")
    if reference and reference not in spec["methods"]:
        raise GridError(f"explainers.reference: {reference!r} is not among explainers.methods")
    for benchmark, split in explainer_splits(config):
        if not _is_evaluated(config, benchmark, split):
            raise GridError(
                f"explainers.splits: {benchmark} {split} is not among the evaluated benchmarks/splits"
            )
    explainer_list(config)  # names, options and layers against the model config


def check_grid(config: dict) -> None:
    """Cross-field checks the JSON schema cannot express; raises GridError with a clear message."""
    methods = expand_methods(config)
    for row in config["table1"]["rows"]:
        if row["method"] not in methods:
            raise GridError(f"table1.rows: method {row['method']!r} is not in methods ({', '.join(methods)})")
    for column in config["table1"]["columns"]:
        if not _is_evaluated(config, column["benchmark"], column["split"]):
            raise GridError(
                f"table1.columns: {column['benchmark']} {column['split']} is not among the evaluated benchmarks/splits"
            )
    reference = (config.get("ablation") or {}).get("reference")
    if reference and reference not in methods:
        raise GridError(f"ablation.reference: method {reference!r} is not in methods")
    qualitative = config.get("qualitative") or {}
    for name in qualitative.get("methods") or []:
        if name not in methods:
            raise GridError(f"qualitative.methods: method {name!r} is not in methods")
    first = config["table1"]["columns"][0]
    benchmark = qualitative.get("benchmark") or first["benchmark"]
    split = qualitative.get("split") or first["split"]
    if not _is_evaluated(config, benchmark, split):
        raise GridError(f"qualitative: {benchmark} {split} is not among the evaluated benchmarks/splits")
    pretrain = config.get("pretrain") or {}
    if pretrain.get("enabled"):
        if not posixpath.normpath(pretrain["out_dir"]).startswith(f"results/{config['run']}/"):
            raise GridError(
                f"pretrain.out_dir: {pretrain['out_dir']!r} must be a folder inside results/{config['run']}/"
            )
        if config["data"]["source"] != "synthetic":
            raise GridError(
                "pretrain.enabled needs data.source: synthetic (the pretrain rule trains on its captions)"
            )
    for name, spec in methods.items():
        kind = spec["kind"]
        if kind in UNTRAINED_KINDS and (spec["objectives"] or spec["optim"] or spec["overrides"]):
            raise GridError(
                f"methods.{name}: kind {kind} is not trained; it takes no objectives/optim/overrides"
            )
        if kind == "released":
            missing = [b for b in config["benchmarks"] if b not in spec["checkpoints"]]
            if missing:
                raise GridError(
                    f"methods.{name}.checkpoints: kind released needs a checkpoint for every benchmark; "
                    f"none for {', '.join(missing)}"
                )
        elif spec["checkpoints"]:
            raise GridError(f"methods.{name}.checkpoints: only a method of kind released takes checkpoints")
    _check_explainers(config, methods)
    for name, spec in (config.get("exports") or {}).items():
        method = methods.get(spec["method"])
        if method is None or method["kind"] != "finetune":
            raise GridError(
                f"exports.{name}.method: {spec['method']!r} is not a fine-tuning method of the grid"
            )
        if spec.get("seed") is not None and spec["seed"] not in method["seeds"]:
            raise GridError(f"exports.{name}.seed: {spec['method']} is not trained with seed {spec['seed']}")
        if spec.get("benchmark") is not None and spec["benchmark"] not in config["benchmarks"]:
            raise GridError(f"exports.{name}.benchmark: {spec['benchmark']!r} is not a benchmark of the run")


def resolved_config(config: dict) -> dict:
    """The configuration as the reports read it: paths resolved, the grid expanded."""
    config = resolve_paths(config)
    config["grid"] = expand_methods(config)
    config["sweep_axes"] = sweep_axes(config)
    if explainers_enabled(config):  # the explainers in order, for the reports
        config["explainer_list"] = [
            {"slug": e.slug, "text": str(e), **e.to_dict()} for e in explainer_list(config)
        ]
    return config


@functools.cache
def _config_schema() -> dict:
    return read_yaml(resources.resource(resources.CONFIG_SCHEMA), "configuration schema")


def config_schema() -> dict:
    """The workflow configuration's JSON Schema (``amc/resources/config.schema.yaml``, package data);
    a copy, so a caller may change it."""
    return copy.deepcopy(_config_schema())


def validate_config(config: dict) -> dict:
    """A copy of a workflow configuration, validated against :func:`config_schema`, with the defaults
    filled in (as Snakemake's ``validate`` does); a :class:`GridError` naming the key otherwise."""
    jsonschema = import_jsonschema()
    schema = config_schema()
    validate_properties = jsonschema.Draft202012Validator.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        for name, subschema in properties.items():
            if isinstance(instance, dict) and "default" in subschema:
                instance.setdefault(name, copy.deepcopy(subschema["default"]))
        yield from validate_properties(validator, properties, instance, schema)

    config = copy.deepcopy(config)
    errors = list(schema_validator(schema, {"properties": set_defaults}).iter_errors(config))
    if errors:
        best = jsonschema.exceptions.best_match(errors)
        where = "config" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in best.absolute_path)
        if best.validator == "pattern" and best.validator_value == NAME_PATTERN:
            raise GridError(f"{where}: {best.instance!r} is not a name ({NAME_RULE})")
        raise GridError(f"{where}: {best.message}")
    _check_values(config, "config")
    return config


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _check_values(node: Any, where: str) -> None:
    """What a JSON schema cannot say of every value: no NaN or infinite number, and no control
    character (a newline in a path or label reaches file names and shell lines)."""
    if (found := find_non_finite(node)) is not None:
        raise GridError(f"{place_text(where, found[0])}: {found[1]!r} is not a finite number")
    _check_text(node, where)


def _check_text(node: Any, where: str) -> None:
    if isinstance(node, str) and _CONTROL.search(node):
        raise GridError(f"{where}: {node!r} holds a control character (a line break, a tab, ...)")
    if isinstance(node, dict):
        for key, value in node.items():
            _check_text(key, f"{where} (key)")
            _check_text(value, f"{where}.{key}")
    elif isinstance(node, list):
        for number, value in enumerate(node):
            _check_text(value, f"{where}[{number}]")


def load_config(path: str) -> dict:
    """A run's configuration for the reports: ``workflow-config.json`` as is, or a config YAML validated and resolved."""
    from amc.io import read_json

    loaded = read_json(path) if str(path).endswith(".json") else read_yaml(path, "workflow configuration")
    if not isinstance(loaded, dict):
        raise DataError(f"{path}: expected a mapping, got {type(loaded).__name__}")
    if str(path).endswith(".json") and "grid" in loaded:
        return loaded
    config = validate_config(loaded)
    check_grid(resolve_paths(config))
    return resolved_config(config)
