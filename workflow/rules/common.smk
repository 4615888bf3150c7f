# Configuration, the method grid, and the small helpers the rules use for inputs and params.
#
# The configuration is validated against the package's amc/resources/config.schema.yaml
# (defaults filled in), then its paths are resolved ({run}, {raw_dir}, {records_dir}) and the
# grid is expanded by amc.grid, the same code `amc report` and the notebook use.

import json
import re
import shlex
import sys
from pathlib import Path

import yaml
from snakemake.exceptions import WorkflowError

from amc import download as amc_download
from amc.records import prepare_report_path
from amc import grid as amc_grid
from amc.report import stages as amc_stages


# Validated with the defaults filled in, in place; the error is one line that says where and
# what (e.g. "config.data: Additional properties are not allowed ('scal' was unexpected)").
try:
    config.update(amc_grid.validate_config(config))
except amc_grid.GridError as error:
    raise WorkflowError(
        f"Invalid workflow configuration (see amc/resources/config.schema.yaml): {error}"
    ) from None
config.update(amc_grid.resolve_paths(config))
try:
    amc_grid.check_grid(config)
except amc_grid.GridError as error:
    raise WorkflowError(f"Invalid workflow configuration: {error}") from None

RUN = config["run"]
RESULTS = amc_grid.run_dir(config)
LOGS = f"{RESULTS}/logs"
RAW = config["data"]["raw_dir"]
SYNTHETIC = config["data"]["source"] == "synthetic"
METHODS = amc_grid.expand_methods(config)
FINETUNED = [m for m, spec in METHODS.items() if spec["kind"] == "finetune"]
# Evaluated as they are (ALBEF, the authors' released checkpoints): the `released` target.
UNTRAINED = [m for m, spec in METHODS.items() if spec["kind"] in amc_grid.UNTRAINED_KINDS]
EXPORTS = config["exports"]
BENCHMARKS = config["benchmarks"]
EVAL_SPLITS = [(b, s) for b, spec in BENCHMARKS.items() for s in spec["splits"]]
SYNTH_FLAG = f"{RAW}/SYNTH_INFO.json"
VG_TRAIN = amc_grid.records_path(config, "vg", "train")


def benchmark_path(rule: str, wildcards: str = "") -> str:
    """A job's Snakemake benchmark TSV (seconds, memory) under results/<run>/benchmarks/, by rule:
    every rule has one; `amc report stages` sums them per stage (`make demo` ends with that table)."""
    return amc_stages.benchmark_path(RESULTS, rule, wildcards)


wildcard_constraints:
    method="|".join(map(re.escape, METHODS)) or "NO_METHOD",
    seed=r"\d+",
    benchmark="|".join(map(re.escape, BENCHMARKS)),
    split=r"[A-Za-z]+",


# ------------------------------------------------------------------ raw data (downloads)


def load_manifest() -> dict[str, amc_download.Artifact]:
    """name -> artifact of the download manifest (none for a synthetic run that names none).

    Read and validated by amc.download, as `amc download` reads it: an artifact's name becomes a
    rule name and a shell argument, so a name outside amc.io.NAME_PATTERN stops the workflow here.
    """
    if config["data"]["manifest"] is None:
        return {}
    try:
        return amc_download.load_manifest(config["data"]["manifest"])
    except amc_download.ManifestError as error:
        raise WorkflowError(f"Invalid download manifest (config data.manifest): {error}") from None


MANIFEST = load_manifest()


def artifact_outputs(entry: amc_download.Artifact) -> list[str]:
    """The paths an artifact produces, under raw_dir (a path without suffix is a folder)."""
    return [f"{RAW}/{p.rstrip('/')}" for p in entry.produces]


def is_folder(path: str) -> bool:
    return Path(path).suffix == "" or path.endswith("/")


PRODUCED = {path: name for name, entry in MANIFEST.items() for path in artifact_outputs(entry)}


def raw_input(path: str) -> str:
    """The workflow target that provides ``path`` (a file or folder of the raw data).

    The manifest output that is ``path`` or a folder holding it; else, synthetic: the
    synth rule's flag file for anything under raw_dir. Other paths are taken as they
    are (they must exist, e.g. a hand-made file).
    """
    if not path.startswith(f"{RAW}/"):
        return path
    for produced in sorted(PRODUCED, key=len, reverse=True):
        if path == produced or path.startswith(f"{produced}/"):
            return produced
    return SYNTH_FLAG if SYNTHETIC else path


def dataset_inputs(dataset: str) -> list[str]:
    """Raw inputs of `amc prepare DATASET`."""
    if SYNTHETIC:
        return [SYNTH_FLAG]
    layout = config["data"]["layout"][dataset]
    missing = [name for name in layout["artifacts"] if name not in MANIFEST]
    if missing:
        raise WorkflowError(
            f"config data.layout.{dataset}.artifacts: {', '.join(missing)} not in {config['data']['manifest']}"
        )
    paths = [p for name in layout["artifacts"] for p in artifact_outputs(MANIFEST[name])]
    return paths or [f"{RAW}/{layout['root']}"]


def layout_path(dataset: str, key: str) -> str:
    return f"{RAW}/{config['data']['layout'][dataset][key]}"


# ------------------------------------------------------------------ records


def eval_records(benchmark: str, split: str) -> str:
    return amc_grid.records_path(config, benchmark, split)


def all_eval_records() -> list[str]:
    return [eval_records(b, s) for b, s in EVAL_SPLITS]


# The fine-tuning records (prepare_vg in data.smk).
VG_LAYOUT = config["data"]["layout"]["vg"]
VG_RELEASED = VG_LAYOUT["format"] == "released"
EXCLUDE_EVAL = config["data"]["exclude_eval_images"]
# The released phrase files carry no COCO/Flickr id: excluding evaluation images maps VG ids through image_data.json.
VG_IMAGE_DATA = layout_path("vg", "image_data") if EXCLUDE_EVAL and VG_RELEASED else None


def vg_exclude_args(wildcards, input) -> str:
    """prepare_vg's flags that leave out the evaluation images (none when exclude_eval_images is off)."""
    if not EXCLUDE_EVAL:
        return ""
    args = "--exclude-records " + " ".join(q(p) for p in input.exclude)
    if VG_IMAGE_DATA:
        args += f" --image-data {q(VG_IMAGE_DATA)}"
    return args


# ------------------------------------------------------------------ training and evaluation


def q(value) -> str:
    return shlex.quote(str(value))


def gpu_launcher(gpus: int, torchrun: bool = False) -> str:
    """`amc gpu-run` prefix: takes `gpus` free devices (none found: the CPU)."""
    prefix = f"amc gpu-run --gpus {gpus} --"
    if torchrun and gpus > 1:
        prefix += f" torchrun --standalone --nproc-per-node {gpus} -m amc"
    else:
        prefix += " amc"
    return prefix


def checkpoint_dir(method: str, seed) -> str:
    return amc_grid.checkpoint_dir(config, method, seed)


def train_inputs(wildcards) -> dict[str, str]:
    spec = METHODS[wildcards.method]
    return {
        "data": raw_input(amc_grid.method_data_path(config, wildcards.method)),
        "init": raw_input(spec["init_checkpoint"]),
        "vocab": raw_input(config["vocab"]),
        "base_config": config["finetune"]["config"],
        "model_config": config["model_config"],
        # the val splits of the best-epoch selection (finetune.select_best)
        **{f"select_{s['name']}": s["records"] for s in amc_grid.selection_splits(config)},
    }


def train_overrides(wildcards) -> str:
    args = amc_grid.train_overrides(config, wildcards.method, int(wildcards.seed))
    return " ".join(q(a) for a in args)


def eval_checkpoints(wildcards) -> list[str]:
    """The checkpoint of each split of EVAL_SPLITS (the best epoch per benchmark, or the final one)."""
    return [
        raw_input(amc_grid.checkpoint_path(config, wildcards.method, int(wildcards.seed), benchmark))
        for benchmark, _ in EVAL_SPLITS
    ]


SELECTION_BENCHMARKS = amc_grid.selection_benchmarks(config)


def eval_path(method: str, seed, benchmark: str, split: str) -> str:
    return amc_grid.eval_path(config, method, seed, benchmark, split)


def all_evals(methods=None, splits=None) -> list[str]:
    methods = list(METHODS) if methods is None else methods
    splits = EVAL_SPLITS if splits is None else splits
    return [
        eval_path(m, seed, b, s) for m in methods for seed in METHODS[m]["seeds"] for b, s in splits
    ]


def export_output(name: str) -> str:
    return amc_grid.export_path(config, name)


def all_train_metrics() -> list[str]:
    return [amc_grid.train_metrics_path(config, m, seed) for m in FINETUNED for seed in METHODS[m]["seeds"]]


# ------------------------------------------------------------------ reports


TABLE1_METHODS = list(dict.fromkeys(row["method"] for row in config["table1"]["rows"]))
TABLE1_SPLITS = [(c["benchmark"], c["split"]) for c in config["table1"]["columns"]]
QUALITATIVE = config["qualitative"]
QUALITATIVE_METHODS = QUALITATIVE.get("methods") or TABLE1_METHODS
QUALITATIVE_SPLIT = (
    QUALITATIVE.get("benchmark") or TABLE1_SPLITS[0][0],
    QUALITATIVE.get("split") or TABLE1_SPLITS[0][1],
)
FIGURES = ["ablation_delta", "training_curves", "error_decomposition"]


def table_paths(name: str) -> list[str]:
    """A table's CSV, Markdown and LaTeX files (amc.grid.table_paths, where `amc report` writes them)."""
    return [str(path) for path in amc_grid.table_paths(RESULTS, name)]


def table_outputs(name: str, label: str) -> dict:
    """A report rule's outputs csv, md and tex for a table; the CSV is shown in the HTML report."""
    csv, md, tex = table_paths(name)
    return {"csv": report(csv, category="Tables", labels={"table": label}), "md": md, "tex": tex}


def figure_paths(name: str) -> list[str]:
    return [str(path) for path in amc_grid.figure_paths(RESULTS, name)]


# ------------------------------------------------------------------ the explainer ablation

EXPLAINERS_ON = amc_grid.explainers_enabled(config)
EXPLAINER_METHODS = config["explainers"]["methods"] if EXPLAINERS_ON else []
EXPLAINER_LIST = amc_grid.explainer_list(config) if EXPLAINERS_ON else []
EXPLAINER_SPLITS = amc_grid.explainer_splits(config) if EXPLAINERS_ON else []


def explainer_evals() -> list[str]:
    return [target["path"] for target in amc_grid.explainer_targets(config)]


def explainer_report_outputs() -> list[str]:
    """The explainer table and figure (none when explainers.enabled is off)."""
    if not EXPLAINERS_ON:
        return []
    return table_paths("explainers") + figure_paths("explainer_layers")


def all_outputs() -> list[str]:
    outputs = table_paths("table1") + table_paths("ablation")
    outputs += explainer_report_outputs()
    for name in FIGURES:
        outputs += figure_paths(name)
    if QUALITATIVE["enabled"]:
        outputs += figure_paths("qualitative")
    outputs += all_evals()
    outputs += [export_output(name) for name in EXPORTS]
    return outputs


# `snakemake released`: the untrained methods' Table 1 rows, in their own files so that `all`'s
# table1 (which needs every trained row) is neither overwritten nor required.
RELEASED_TABLE = "table1_released"
RELEASED_ROWS = [m for m in TABLE1_METHODS if m in UNTRAINED]


def released_outputs() -> list[str]:
    """Evaluations of the untrained methods and their Table 1 (no training output needed)."""
    if not RELEASED_ROWS:
        raise WorkflowError(
            "snakemake released: no table1.rows method of kind none or released in the configuration"
        )
    outputs = table_paths(RELEASED_TABLE)
    return outputs + all_evals(UNTRAINED)
