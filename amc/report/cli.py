"""``amc report``: tables and figures of one run, from ``results/<run>/``.

    amc report config      --json TEXT --out results/<run>/workflow-config.json
    amc report table1      --run results/<run> --config CONFIG [--methods M ...] [--name table1_released]
    amc report ablation    --run results/<run> --config CONFIG
    amc report figures     --run results/<run> --config CONFIG
    amc report qualitative --run results/<run> --config CONFIG
    amc report explainers  --run results/<run> --config CONFIG
    amc report stages      --run results/<run> [--by stage|rule] [--out stages.md]

CONFIG is the run's ``workflow-config.json`` (written by the workflow's run_config
rule) or a workflow configuration YAML (``config/demo.yaml``). Outputs go to
``results/<run>/tables/`` and ``results/<run>/figures/``. ``stages`` prints the run's time and
memory per stage from the workflow's benchmark files (:mod:`amc.report.stages`).

The table and figure modules (pandas, matplotlib, torch for the heatmaps) are imported by the
actions that use them only: ``config`` and ``stages`` start in a fraction of a second.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from amc import grid
from amc.cli import positive_int
from amc.io import AmcError, atomic_write_json, atomic_write_text, check_name, check_outputs
from amc.report import stages

log = logging.getLogger("amc.report")

ACTIONS = ("config", "table1", "ablation", "figures", "qualitative", "explainers", "stages")


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=ACTIONS)
    parser.add_argument("--run", type=Path, help="results/<run> folder")
    parser.add_argument("--config", help="workflow-config.json of the run, or a config YAML")
    parser.add_argument("--json", help="config: the resolved configuration as JSON text")
    parser.add_argument(
        "--out",
        type=Path,
        help="config: where to write workflow-config.json; stages: also write the table there",
    )
    parser.add_argument(
        "--n-boot", type=positive_int, default=None, help="bootstrap replicates (default: config's)"
    )
    parser.add_argument(
        "--methods", nargs="+", help="table1: only the rows of these methods (default: every row)"
    )
    parser.add_argument(
        "--name", default="table1", help="table1: file name stem under tables/ (default table1)"
    )
    parser.add_argument(
        "--by", choices=("stage", "rule"), default="stage", help="stages: one row per stage or per rule"
    )


def _load(args: argparse.Namespace) -> dict:
    if not args.config:
        candidate = args.run / grid.RUN_CONFIG_FILE if args.run else None
        if candidate is None or not candidate.is_file():
            raise AmcError("--config is required (the run's workflow-config.json or a config YAML)")
        args.config = str(candidate)
    try:
        return grid.load_config(args.config)
    except (grid.GridError, OSError) as error:
        raise AmcError(f"{args.config}: {error}") from None


def run(args: argparse.Namespace) -> int:
    if args.action == "config":
        if not args.json or not args.out:
            raise AmcError("amc report config needs --json and --out")
        check_outputs({"--out": args.out})
        try:
            resolved = json.loads(args.json)
        except json.JSONDecodeError as error:
            raise AmcError(f"--json: not valid JSON ({error.msg})") from None
        atomic_write_json(args.out, resolved)
        log.info("wrote %s", args.out)
        return 0
    if args.run is None:
        raise AmcError(f"amc report {args.action} needs --run results/<run>")
    if args.action == "stages":
        check_outputs({"--out": args.out})
        table = stages.format_table(stages.stage_table(stages.read_jobs(args.run), by=args.by), by=args.by)
        sys.stdout.write(f"\nTime and memory per {args.by} of {args.run} (its benchmarks/):\n\n{table}")
        if args.out:
            atomic_write_text(args.out, table)
            log.info("wrote %s", args.out)
        return 0
    from amc.report import tables

    check_name(args.name, "--name")
    check_outputs(
        {},
        folders={
            "--run (tables)": args.run / grid.TABLES_DIR,
            "--run (figures)": args.run / grid.FIGURES_DIR,
        },
    )
    config = _load(args)
    n_boot = args.n_boot or (config.get("ablation") or {}).get("n_boot") or 10000
    if args.action == "explainers":
        for path in make_explainers(args.run, config, n_boot):
            log.info("wrote %s", path)
        return 0
    results = tables.load_all(args.run, *_results_needed(args, config))
    if not results:
        raise AmcError(f"{args.run}: no evaluation results under {grid.EVAL_DIR}/")
    run_name = config.get("run", args.run.name)
    if args.action == "table1":
        frame = tables.table1_frame(results, config, n_boot=n_boot, methods=args.methods)
        paths = tables.write_table1(frame, args.run, run_name, stem=args.name)
    elif args.action == "ablation":
        frame = tables.ablation_frame(results, config, n_boot=n_boot)
        reference = (config.get("ablation") or {}).get("reference")
        paths = tables.write_ablation(frame, args.run, run_name, reference)
    elif args.action == "figures":
        paths = make_figures(args.run, config, results, n_boot)
    else:
        paths = make_qualitative(args.run, config, results)
    for path in paths:
        log.info("wrote %s", path)
    return 0


def _results_needed(
    args: argparse.Namespace, config: dict
) -> tuple[list[str] | None, list[tuple[str, str]] | None]:
    """The methods and (benchmark, split)s whose results ``args.action`` reads (None: all), as the
    workflow's rule declares them as inputs: Table 1 its rows and columns, qualitative its methods and split."""
    if args.action == "table1":
        methods = args.methods or [row["method"] for row in config["table1"]["rows"]]
        return methods, [(c["benchmark"], c["split"]) for c in config["table1"]["columns"]]
    if args.action == "qualitative":
        benchmark, split, methods = qualitative_setup(config)
        return methods, [(benchmark, split)]
    return None, None


def make_figures(run_dir: Path, config: dict, results, n_boot: int) -> list[Path]:
    from amc.report import figures, tables

    out = run_dir / grid.FIGURES_DIR
    labels = {name: spec["label"] for name, spec in (config.get("grid") or {}).items()}
    ablation = tables.ablation_frame(results, config, n_boot=n_boot)
    paths = figures.ablation_delta(ablation, config.get("sweep_axes") or [], out / "ablation_delta")
    paths += figures.training_curves(figures.load_metrics(run_dir), labels, out / "training_curves")
    paths += figures.error_decomposition(ablation, out / "error_decomposition")
    return paths


def make_explainers(run_dir: Path, config: dict, n_boot: int) -> list[Path]:
    """tables/explainers.{csv,md,tex} and figures/explainer_layers.{png,pdf} from eval_explainers/."""
    from amc.report import figures, tables

    results = tables.load_explainer_evals(run_dir)
    if not results:
        raise AmcError(f"{run_dir}: no explainer results under {grid.EXPLAINER_EVAL_DIR}/")
    frame = tables.explainer_frame(results, config, n_boot=n_boot)
    reference = (config.get("explainers") or {}).get("reference")
    paths = tables.write_explainers(frame, run_dir, config.get("run", run_dir.name), reference)
    first = next(iter(next(iter(results.values())).values()))
    trained = (first.summary.get("model_config") or {}).get("gradcam_layer")
    return paths + figures.explainer_layers(frame, run_dir / grid.FIGURES_DIR / "explainer_layers", trained)


def qualitative_setup(config: dict) -> tuple[str, str, list[str]]:
    columns = config["table1"]["columns"]
    spec = config.get("qualitative") or {}
    benchmark = spec.get("benchmark") or columns[0]["benchmark"]
    split = spec.get("split") or columns[0]["split"]
    methods = spec.get("methods") or list(dict.fromkeys(r["method"] for r in config["table1"]["rows"]))
    return benchmark, split, methods


def make_qualitative(run_dir: Path, config: dict, results) -> list[Path]:
    """Choose examples where the methods disagree, compute each method's heatmaps of them (one model
    load per method, amc evaluate's loop and inputs), draw the grid."""
    from amc.records import load_records
    from amc.report import figures

    benchmark, split, methods = qualitative_setup(config)
    spec = config.get("qualitative") or {}
    method_grid = config["grid"]
    runs = {}
    for method in methods:
        by_seed = results.get((method, benchmark, split))
        if not by_seed:
            raise AmcError(f"qualitative: no results of {method} on {benchmark} {split}")
        runs[method] = by_seed[min(by_seed)]
    reference = (config.get("ablation") or {}).get("reference")
    ids = figures.choose_examples(runs, spec.get("examples", 6), prefer=reference)
    records_path = Path(grid.records_path(config, benchmark, split))
    by_id = {r.id: r for r in load_records(records_path)}
    missing = [case_id for case_id in ids if case_id not in by_id]
    if missing:
        raise AmcError(f"{records_path}: case {missing[0]!r} of the evaluation is not in the records")
    records = [by_id[case_id] for case_id in ids]
    bench = config["benchmarks"][benchmark]
    heatmaps = {
        method: figures.method_heatmaps(
            grid.checkpoint_path(config, method, runs[method].seed, benchmark),
            records,
            benchmark=benchmark,
            image_res=bench["image_res"],
            resize=bench.get("resize"),
            # as the evaluate rule passes them: ALBEF.pth and the released checkpoints carry neither
            model_config=config["model_config"],
            vocab=config["vocab"],
        )
        for method in methods
    }
    examples = []
    for record in records:
        points = {}
        for method in methods:
            case = runs[method].cases.set_index("id").loc[record.id]
            points[method] = (tuple(case["point"]), bool(case["hit"]))
        examples.append(
            {
                "id": record.id,
                "image": record.image,
                "phrase": record.phrase,
                "boxes": record.boxes,
                "heatmaps": {method: heatmaps[method].get(record.id) for method in methods},
                "points": points,
            }
        )
    labels = [(m, method_grid.get(m, {}).get("label", m)) for m in methods]
    return figures.qualitative_grid(examples, labels, run_dir / grid.FIGURES_DIR / "qualitative")
