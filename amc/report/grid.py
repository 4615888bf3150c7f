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
import json
import sys
from types import ModuleType
from typing import Any

import yaml

from amc import resources
from amc.selection import best_checkpoint_name

PLACEHOLDERS = ("run", "raw_dir", "records_dir")
# Kinds evaluated as they are: no training, no seeds (one evaluation, under the first seed).
UNTRAINED_KINDS = ("none", "released")
# data.manifest of a real-data run that names none: the manifest shipped with the package
DEFAULT_MANIFEST = str(resources.resource(resources.MANIFEST))


class GridError(ValueError):
    """A configuration that passes the schema but does not make a grid."""


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

    Each entry gains ``seeds`` (resolved; one seed for the untrained kinds none and released),
    ``init_checkpoint`` (resolved), ``checkpoints`` ({} unless released) and ``sweep`` (None, or
    {base, parameter, symbol, value}).
    """
    declared = config["methods"]
    seeds = list(config["seeds"])
    methods: dict[str, dict] = {}
    for name, spec in declared.items():
        entry = copy.deepcopy(spec)
        entry.setdefault("objectives", {})
        entry.setdefault("optim", {})
        entry.setdefault("data", {})
        entry.setdefault("overrides", {})
        entry["checkpoints"] = dict(entry.get("checkpoints") or {})
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
        symbol = sweep.get("symbol") or sweep["parameter"].rsplit(".", 1)[-1]
        for value in sweep["values"]:
            if value == base_value:
                continue  # the base method itself
            name = sweep["name"].replace("{value}", value_text(value))
            if name in methods:
                raise GridError(f"sweeps[{number}]: method name {name!r} already exists")
            entry = copy.deepcopy(declared[base_name])
            entry.setdefault("objectives", {})
            entry.setdefault("optim", {})
            entry.setdefault("data", {})
            entry.setdefault("overrides", {})
            _set_dotted(entry, sweep["parameter"], value)
            label_pattern = sweep.get("label") or "{base_label}, {symbol} = {value}"
            entry["label"] = (
                label_pattern.replace("{base_label}", base["label"])
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


def sweep_axes(config: dict) -> list[dict]:
    """One entry per sweep: {base, parameter, symbol, points: [{value, method}]} sorted by value."""
    methods = expand_methods(config)
    axes = []
    for sweep in config.get("sweeps") or []:
        base = sweep["base"]
        symbol = sweep.get("symbol") or sweep["parameter"].rsplit(".", 1)[-1]
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
            items.extend(_flatten(f"{prefix}.{key}" if prefix else str(key), value))
        return items
    return [(prefix, node)]


def override_value(value: Any) -> str:
    """A value as ``amc train`` parses it (YAML): JSON for anything YAML could misread."""
    if isinstance(value, str):
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError:
            parsed = None
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
        ("data.path", f"{config['data']['records_dir']}/vg-train.jsonl"),
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
    return spec["data"].get("path") or f"{config['data']['records_dir']}/vg-train.jsonl"


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
            "records": f"{config['data']['records_dir']}/{name}-val.jsonl",
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
    folder = f"results/{config['run']}/checkpoints/{method}/seed{seed}"
    if benchmark is not None and benchmark in selection_benchmarks(config):
        return f"{folder}/{best_checkpoint_name(benchmark)}"
    return f"{folder}/checkpoint_final.pt"


def export_path(config: dict, name: str) -> str:
    """Where the export ``name`` (config ``exports``) is written."""
    return f"results/{config['run']}/exports/{name}.pth"


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
                            "path": f"results/{config['run']}/eval/{method}/seed{seed}/{benchmark}-{split}.json",
                        }
                    )
    return targets


def check_grid(config: dict) -> None:
    """Cross-field checks the JSON schema cannot express; raises GridError with a clear message."""
    methods = expand_methods(config)
    for row in config["table1"]["rows"]:
        if row["method"] not in methods:
            raise GridError(f"table1.rows: method {row['method']!r} is not in methods ({', '.join(methods)})")
    for column in config["table1"]["columns"]:
        bench = config["benchmarks"].get(column["benchmark"])
        if bench is None or column["split"] not in bench["splits"]:
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
    if config.get("pretrain", {}).get("enabled") and config["data"]["source"] != "synthetic":
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
    return config


def config_schema() -> dict:
    """The workflow configuration's JSON Schema (``amc/resources/config.schema.yaml``, package data)."""
    return yaml.safe_load(resources.resource(resources.CONFIG_SCHEMA).read_text(encoding="utf-8"))


def _import_jsonschema() -> ModuleType:
    """jsonschema, imported (when this process has not yet) without its optional ``rfc3987_syntax``.

    jsonschema's format checkers import ``rfc3987_syntax`` (installed with jsonschema[format-nongpl],
    e.g. by Jupyter) for the ``iri`` formats, and that import builds some 40 Lark parsers: about 1 s
    on an idle core, several on a busy machine, paid by every Snakemake run of this workflow (the
    Snakefile validates the configuration, the HTML report's own Snakemake too). The configuration
    schema uses no ``format``, so the module is hidden from that one import; jsonschema then goes
    without the ``iri`` checkers, as when the module is not installed (jsonschema issue #1428).
    """
    if "jsonschema" not in sys.modules and "rfc3987_syntax" not in sys.modules:
        sys.modules["rfc3987_syntax"] = None  # type: ignore[assignment]  # importing it raises ImportError
        try:
            import jsonschema
        finally:
            del sys.modules["rfc3987_syntax"]
    import jsonschema

    return jsonschema


def validate_config(config: dict) -> dict:
    """A copy of a workflow configuration, validated against :func:`config_schema`, with the defaults
    filled in (as Snakemake's ``validate`` does); a :class:`GridError` naming the key otherwise."""
    jsonschema = _import_jsonschema()
    from jsonschema import Draft202012Validator, validators

    schema = config_schema()
    validate_properties = Draft202012Validator.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        for name, subschema in properties.items():
            if isinstance(instance, dict) and "default" in subschema:
                instance.setdefault(name, copy.deepcopy(subschema["default"]))
        yield from validate_properties(validator, properties, instance, schema)

    validator_class = validators.extend(Draft202012Validator, {"properties": set_defaults})
    config = copy.deepcopy(config)
    errors = list(validator_class(schema).iter_errors(config))
    if errors:
        best = jsonschema.exceptions.best_match(errors)
        where = "config" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in best.absolute_path)
        raise GridError(f"{where}: {best.message}")
    return config


def load_config(path: str) -> dict:
    """A run's configuration for the reports: ``workflow-config.json`` as is, or a config YAML validated and resolved."""
    with open(path, encoding="utf-8") as handle:
        if str(path).endswith(".json"):
            loaded = json.load(handle)
            if "grid" in loaded:
                return loaded
        else:
            loaded = yaml.safe_load(handle)
    config = validate_config(loaded)
    check_grid(resolve_paths(config))
    return resolved_config(config)
