"""Tables from evaluation results: Table 1 against the paper, and the ablation table.

Input: ``results/<run>/eval/<method>/seed<k>/<benchmark>-<split>.json`` (summary +
per-case outcome, docs/architecture.md) and the run's ``workflow-config.json``.

Statistics (amc.stats):

* accuracy of a method on a split: the mean over seeds of the per-seed accuracy,
  with a 95% percentile-bootstrap interval over cases (and over seeds when there
  are several: ``bootstrap_ci`` on the [seeds, cases] matrix);
* a variant against the reference (full AMC): paired bootstrap over the same case
  ids (per-case hits averaged over the seeds of each method first), and McNemar's
  test on one run of each (the first seed both have; an untrained method, kind none or
  released, has one seed-independent run);
* error decomposition: of the misses, the share whose point fell inside another
  annotated box of the image (``miss == "other_object"``) and the share on the
  background (``"background"``).
"""

from __future__ import annotations

import logging
import math
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from amc import stats
from amc.grid import (
    EVAL_GLOB,
    EXPLAINER_EVAL_DIR,
    UNTRAINED_KINDS,
    parse_eval_path,
    parse_explainer_eval_path,
    table_paths,
)
from amc.io import DataError, atomic_write_text
from amc.result_format import read_result

log = logging.getLogger(__name__)

# ------------------------------------------------------------------ loading


@dataclass
class EvalRun:
    """One evaluation result: a method, a seed, a benchmark split."""

    method: str
    seed: int
    benchmark: str
    split: str
    path: Path
    summary: dict
    cases: pd.DataFrame  # id, hit, miss, category, point


def read_cases(path: Path) -> tuple[dict, pd.DataFrame]:
    """The summary and the cases (id, hit, miss, category, point, energy) of a result file, validated
    (:func:`amc.result_format.read_result`: its schema, at least one case, each id once)."""
    data = read_result(path)
    summary = data["summary"]
    cases = pd.DataFrame(data["cases"])
    for column in ("miss", "category", "point", "energy"):
        if column not in cases:
            cases[column] = None
    cases["hit"] = cases["hit"].astype(bool)
    return summary, cases


def load_eval(path: str | Path) -> EvalRun:
    path = Path(path)
    summary, cases = read_cases(path)
    method, seed, benchmark, split = parse_eval_path(path)
    return EvalRun(method, seed, benchmark, split, path, summary, cases)


def find_evals(
    run_dir: str | Path, methods: list[str] | None = None, splits: list[tuple[str, str]] | None = None
) -> list[Path]:
    """The result files under ``run_dir/eval``; only those of ``methods`` and (benchmark, split) ``splits``
    when given."""
    paths = sorted(Path(run_dir).glob(EVAL_GLOB))
    if methods is not None:
        paths = [p for p in paths if p.parent.parent.name in methods]
    if splits is not None:
        stems = {f"{benchmark}-{split}" for benchmark, split in splits}
        paths = [p for p in paths if p.stem in stems]
    return paths


def load_all(
    run_dir: str | Path, methods: list[str] | None = None, splits: list[tuple[str, str]] | None = None
) -> dict[tuple[str, str, str], dict[int, EvalRun]]:
    """(method, benchmark, split) -> {seed: EvalRun} for every result under ``run_dir`` (only those of
    ``methods`` and ``splits`` when given: a report reads and validates what it shows, no more)."""
    results: dict[tuple[str, str, str], dict[int, EvalRun]] = {}
    for path in find_evals(run_dir, methods, splits):
        run = load_eval(path)
        results.setdefault((run.method, run.benchmark, run.split), {})[run.seed] = run
    return results


def cases_frame(results: dict[tuple[str, str, str], dict[int, EvalRun]]) -> pd.DataFrame:
    """Every case of every run as one long frame (method, seed, benchmark, split, id, hit, miss, category)."""
    frames = []
    for (method, benchmark, split), by_seed in results.items():
        for seed, run in by_seed.items():
            frame = run.cases[["id", "hit", "miss", "category"]].copy()
            frame.insert(0, "split", split)
            frame.insert(0, "benchmark", benchmark)
            frame.insert(0, "seed", seed)
            frame.insert(0, "method", method)
            frames.append(frame)
    if not frames:
        return pd.DataFrame(columns=["method", "seed", "benchmark", "split", "id", "hit", "miss", "category"])
    return pd.concat(frames, ignore_index=True)


def hit_matrix(by_seed: dict[int, EvalRun], ids: list[str] | None = None) -> tuple[np.ndarray, list[str]]:
    """[seeds, cases] 0/1 matrix aligned on case ids (the first seed's order unless ``ids`` given)."""
    return case_matrix(by_seed, "hit", ids)


def case_matrix(
    by_seed: dict[int, EvalRun], column: str, ids: list[str] | None = None
) -> tuple[np.ndarray, list[str]]:
    """[seeds, cases] matrix of a per-case number (``hit``, ``energy``), aligned on case ids.

    An energy of None (a map without positive mass) counts 0: none of its mass is in the boxes.
    """
    seeds = sorted(by_seed)
    if ids is None:
        ids = list(by_seed[seeds[0]].cases["id"])
    rows = []
    for seed in seeds:
        values = by_seed[seed].cases.set_index("id")[column]
        missing = set(ids) - set(values.index)
        if missing:
            raise DataError(
                f"{by_seed[seed].path}: {len(missing)} case id(s) of the other runs are missing "
                f"(e.g. {sorted(missing)[0]!r}); runs of one split must cover the same cases"
            )
        rows.append(values.loc[ids].astype(float).fillna(0.0).to_numpy(dtype=float))
    return np.vstack(rows), ids


def miss_shares(by_seed: dict[int, EvalRun]) -> dict[str, float]:
    """Counts and shares of misses on another object vs on the background, pooled over seeds."""
    misses = pd.concat([run.cases.loc[~run.cases["hit"], "miss"] for run in by_seed.values()])
    n = int(len(misses))
    n_cases = int(sum(len(run.cases) for run in by_seed.values()))
    other = int((misses == "other_object").sum())
    background = int((misses == "background").sum())
    return {
        "n_misses": n,
        "miss_other_object": other,
        "miss_background": background,
        "miss_other_object_share": other / n if n else math.nan,
        "miss_background_share": background / n if n else math.nan,
        "other_object_rate": other / n_cases if n_cases else math.nan,
        "background_rate": background / n_cases if n_cases else math.nan,
    }


# ------------------------------------------------------------------ formatting


def pct(value: float, digits: int = 2) -> str:
    return (
        "–"
        if value is None or (isinstance(value, float) and math.isnan(value))
        else f"{100 * value:.{digits}f}"
    )


def pct_points(value: float, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:+.{digits}f}"


def fmt_p(p: float) -> str:
    if p is None or (isinstance(p, float) and math.isnan(p)):
        return "–"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


# LaTeX's special characters, then the non-ASCII ones the tables use: the .tex files are plain
# ASCII, so pdflatex compiles them with any input encoding and no package beyond the kernel.
_TEX_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "<": "$<$",  # in text mode the OT1 font prints < as an inverted exclamation mark
    ">": "$>$",
    "|": "$|$",
}
_TEX_UNICODE = {
    "Δ": r"$\Delta$",
    "−": "$-$",  # U+2212, the minus sign
    "–": "--",
    "—": "---",
    "±": r"$\pm$",
    "×": r"$\times$",
    "≤": r"$\leq$",
    "≥": r"$\geq$",
    "’": "'",
    "“": "``",
    "”": "''",
}


def tex_escape(text: str) -> str:
    """Text as LaTeX source: specials escaped, `code` as \\texttt, the tables' Unicode symbols as
    ASCII commands; any other non-ASCII character becomes its closest ASCII letters (é -> e)."""
    parts = text.split("`")
    out = []
    for number, part in enumerate(parts):
        escaped = "".join(_TEX_SPECIAL.get(char) or _TEX_UNICODE.get(char) or char for char in part)
        if not escaped.isascii():
            escaped = unicodedata.normalize("NFKD", escaped).encode("ascii", "ignore").decode("ascii")
        # odd parts sat between backticks (an unpaired last backtick is kept as text)
        if number % 2 and number < len(parts) - 1:
            escaped = rf"\texttt{{{escaped}}}"
        elif number % 2:
            escaped = "`" + escaped
        out.append(escaped)
    return "".join(out)


def _tex_cell(text: str) -> str:
    cell = re.sub(r"(?<![\w.])-(?=\d)", "$-$", tex_escape(text))  # a negative number's minus, not a hyphen
    return "{}" + cell if cell.startswith("[") else cell  # after \\ a [ would be read as a row skip


def latex_table(header: list[str], rows: list[list[str]], caption: str, label: str) -> str:
    """A ``table`` float with a plain ``tabular`` (\\hline rules): compiles with pdflatex and no package."""
    lines = [
        r"\begin{table}[t]",
        r"\centering",
        r"\small",
        r"\begin{tabular}{l" + "r" * (len(header) - 1) + "}",
        r"\hline",
        " & ".join(_tex_cell(h) for h in header) + r" \\",
        r"\hline",
    ]
    lines += [" & ".join(_tex_cell(c) for c in row) + r" \\" for row in rows]
    lines += [r"\hline", r"\end{tabular}", rf"\caption{{{tex_escape(caption)}}}", rf"\label{{{label}}}"]
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ Table 1


def load_paper(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: the paper's Table 1 numbers are missing")
    paper = pd.read_csv(path)
    needed = {"method", "benchmark", "split", "value", "source"}
    if not needed <= set(paper.columns):
        raise DataError(f"{path}: needs columns {', '.join(sorted(needed))}")
    return paper


def table1_frame(
    results: dict[tuple[str, str, str], dict[int, EvalRun]],
    config: dict,
    n_boot: int = 10000,
    methods: list[str] | None = None,
) -> pd.DataFrame:
    """One row per (Table 1 row, column): paper, reproduced mean with interval, difference.

    ``methods`` keeps only the rows of those methods (``snakemake released``: the untrained ones).
    """
    paper = load_paper(config["table1"]["paper"])
    table_rows = [r for r in config["table1"]["rows"] if methods is None or r["method"] in methods]
    if not table_rows:
        raise DataError(f"table1: none of the methods {methods} has a row in the configuration's table1.rows")
    rows = []
    for row in table_rows:
        for column in config["table1"]["columns"]:
            benchmark, split = column["benchmark"], column["split"]
            match = paper[
                (paper["method"] == row["paper"])
                & (paper["benchmark"] == benchmark)
                & (paper["split"] == split)
            ]
            paper_value = float(match["value"].iloc[0]) if len(match) else math.nan
            source = str(match["source"].iloc[0]) if len(match) else ""
            by_seed = results.get((row["method"], benchmark, split))
            record = {
                "row": row["label"],
                "method": row["method"],
                "benchmark": benchmark,
                "split": split,
                "column": column.get("label") or f"{benchmark} {split}",
                "paper": paper_value,
                "reproduced": math.nan,
                "low": math.nan,
                "high": math.nan,
                "difference": math.nan,
                "n_seeds": 0,
                "n_cases": 0,
                "seeds": "",
                "source": source,
            }
            if by_seed:
                matrix, _ = hit_matrix(by_seed)
                interval = stats.bootstrap_ci(matrix, n_boot=n_boot)
                record.update(
                    reproduced=100 * interval.mean,
                    low=100 * interval.low,
                    high=100 * interval.high,
                    difference=100 * interval.mean - paper_value,
                    n_seeds=interval.n_seeds,
                    n_cases=interval.n_cases,
                    seeds=",".join(str(s) for s in sorted(by_seed)),
                )
            else:
                log.warning("table1: no results for %s on %s %s", row["method"], benchmark, split)
            rows.append(record)
    return pd.DataFrame(rows)


def write_table1(frame: pd.DataFrame, run_dir: str | Path, run_name: str, stem: str = "table1") -> list[Path]:
    """``tables/<stem>.csv``, ``.md`` and ``.tex`` under the run's results folder ``run_dir``."""
    columns = list(dict.fromkeys(frame["column"]))
    header = ["Method"]
    for column in columns:
        header += [f"{column} paper", f"{column} reproduced [95% CI]", f"{column} Δ"]
    rows = []
    for label in dict.fromkeys(frame["row"]):
        cells = [label]
        for column in columns:
            cell = frame[(frame["row"] == label) & (frame["column"] == column)].iloc[0]
            cells += [
                "–" if math.isnan(cell["paper"]) else f"{cell['paper']:.2f}",
                "–"
                if math.isnan(cell["reproduced"])
                else f"{cell['reproduced']:.2f} [{cell['low']:.2f}, {cell['high']:.2f}]",
                pct_points(cell["difference"]),
            ]
        rows.append(cells)
    sources = sorted({s for s in frame["source"] if s})
    seeds = sorted({int(n) for n in frame["n_seeds"] if n})
    note = (
        f"Pointing accuracy (%), run `{run_name}`. Paper: {'; '.join(sources) or 'n/a'}. "
        f"Reproduced: mean over {'/'.join(map(str, seeds)) or '0'} seed(s) with a 95% bootstrap interval "
        "over cases (and seeds when several); Δ = reproduced − paper, in points."
    )
    paths = table_paths(run_dir, stem)
    atomic_write_text(paths[0], frame.to_csv(index=False, float_format="%.4f"))
    atomic_write_text(
        paths[1], "# Table 1: pointing accuracy\n\n" + markdown_table(header, rows) + "\n" + note + "\n"
    )
    atomic_write_text(paths[2], latex_table(header, rows, note, f"tab:{stem.replace('_', '-')}"))
    return paths


# ------------------------------------------------------------------ ablation


def _mcnemar_pair(a: dict[int, EvalRun], b: dict[int, EvalRun], ids: list[str], a_none: bool, b_none: bool):
    """McNemar on one run of each: the first common seed (a seedless method matches any)."""
    if a_none or b_none:
        seed_a, seed_b = min(a), min(b)
    else:
        common = sorted(set(a) & set(b))
        if not common:
            return None, None
        seed_a = seed_b = common[0]
    hits_a = a[seed_a].cases.set_index("id")["hit"].loc[ids].to_numpy()
    hits_b = b[seed_b].cases.set_index("id")["hit"].loc[ids].to_numpy()
    return stats.mcnemar(hits_a, hits_b), seed_a if not a_none else seed_b


def ablation_frame(
    results: dict[tuple[str, str, str], dict[int, EvalRun]], config: dict, n_boot: int = 10000
) -> pd.DataFrame:
    """One row per (method, benchmark, split): accuracy, paired comparison with the reference, misses."""
    grid = config.get("grid") or {}
    reference = (config.get("ablation") or {}).get("reference")
    methods = list(grid) or sorted({m for m, _, _ in results})
    splits = [(b, s) for b, spec in config["benchmarks"].items() for s in spec["splits"]]
    rows = []
    for method in methods:
        spec = grid.get(method, {})
        for benchmark, split in splits:
            by_seed = results.get((method, benchmark, split))
            if not by_seed:
                log.warning("ablation: no results for %s on %s %s", method, benchmark, split)
                continue
            matrix, ids = hit_matrix(by_seed)
            interval = stats.bootstrap_ci(matrix, n_boot=n_boot)
            record = {
                "method": method,
                "label": spec.get("label", method),
                "kind": spec.get("kind", ""),
                "sweep_parameter": (spec.get("sweep") or {}).get("parameter", ""),
                "sweep_value": (spec.get("sweep") or {}).get("value", math.nan),
                "benchmark": benchmark,
                "split": split,
                "n_seeds": interval.n_seeds,
                "n_cases": interval.n_cases,
                "accuracy": 100 * interval.mean,
                "low": 100 * interval.low,
                "high": 100 * interval.high,
                "reference": reference or "",
                "diff_vs_reference": math.nan,
                "diff_low": math.nan,
                "diff_high": math.nan,
                "p_bootstrap": math.nan,
                "mcnemar_p": math.nan,
                "mcnemar_b": math.nan,
                "mcnemar_c": math.nan,
                "mcnemar_seed": math.nan,
            }
            ref_by_seed = results.get((reference, benchmark, split)) if reference else None
            if ref_by_seed and method != reference:
                ref_matrix, _ = hit_matrix(ref_by_seed, ids)
                paired = stats.paired_bootstrap(matrix, ref_matrix, n_boot=n_boot)
                record.update(
                    diff_vs_reference=100 * paired.diff,
                    diff_low=100 * paired.low,
                    diff_high=100 * paired.high,
                    p_bootstrap=paired.p_value,
                )
                test, seed = _mcnemar_pair(
                    by_seed,
                    ref_by_seed,
                    ids,
                    spec.get("kind") in UNTRAINED_KINDS,
                    grid.get(reference, {}).get("kind") in UNTRAINED_KINDS,
                )
                if test is not None:
                    record.update(
                        mcnemar_p=test.p_value, mcnemar_b=test.b, mcnemar_c=test.c, mcnemar_seed=seed
                    )
            record.update(miss_shares(by_seed))
            rows.append(record)
    return pd.DataFrame(rows)


def write_ablation(
    frame: pd.DataFrame, run_dir: str | Path, run_name: str, reference: str | None
) -> list[Path]:
    """``tables/ablation.csv``, ``.md`` and ``.tex`` under the run's results folder ``run_dir``."""
    header = [
        "Method",
        "Split",
        "Seeds",
        "Accuracy [95% CI]",
        f"Δ vs {reference} [95% CI]" if reference else "Δ",
        "p (paired bootstrap)",
        "p (McNemar)",
        "Misses: other object",
        "Misses: background",
    ]
    rows = []
    for _, r in frame.iterrows():
        rows.append(
            [
                str(r["label"]),
                f"{r['benchmark']} {r['split']}",
                str(int(r["n_seeds"])),
                f"{r['accuracy']:.2f} [{r['low']:.2f}, {r['high']:.2f}]",
                "–"
                if math.isnan(r["diff_vs_reference"])
                else f"{r['diff_vs_reference']:+.2f} [{r['diff_low']:+.2f}, {r['diff_high']:+.2f}]",
                fmt_p(r["p_bootstrap"]),
                fmt_p(r["mcnemar_p"]),
                pct(r["miss_other_object_share"], 1) + "%"
                if not math.isnan(r["miss_other_object_share"])
                else "–",
                pct(r["miss_background_share"], 1) + "%"
                if not math.isnan(r["miss_background_share"])
                else "–",
            ]
        )
    note = (
        f"Pointing accuracy (%), run `{run_name}`, every variant of the grid. Δ: paired difference "
        f"with {reference or 'the reference'} on the same cases (points; per-case hits averaged over "
        "seeds, 95% paired bootstrap interval and two-sided p-value); McNemar: exact/chi-square test on "
        "one run of each (the first common seed). Misses: share of the misses whose point fell inside "
        "another annotated object of the image vs on the background."
    )
    paths = table_paths(run_dir, "ablation")
    atomic_write_text(paths[0], frame.to_csv(index=False, float_format="%.4f"))
    atomic_write_text(paths[1], "# Ablations\n\n" + markdown_table(header, rows) + "\n" + note + "\n")
    atomic_write_text(paths[2], latex_table(header, rows, note, "tab:ablation"))
    return paths


def category_frame(results: dict[tuple[str, str, str], dict[int, EvalRun]]) -> pd.DataFrame:
    """Accuracy per case category (method, benchmark, split, category), pooled over seeds."""
    cases = cases_frame(results)
    if cases.empty:
        return cases
    cases["category"] = cases["category"].fillna("(none)")
    grouped = cases.groupby(["method", "benchmark", "split", "category"], as_index=False).agg(
        n_cases=("hit", "size"), accuracy=("hit", "mean")
    )
    grouped["accuracy"] *= 100
    return grouped


# ------------------------------------------------------------------ the explainer ablation


def load_explainer_evals(run_dir: str | Path) -> dict[tuple[str, str, str, str], dict[int, EvalRun]]:
    """(method, benchmark, split, explainer slug) -> {seed: EvalRun} for every result under
    ``run_dir/eval_explainers/`` (:func:`amc.grid.explainer_eval_path`)."""

    results: dict[tuple[str, str, str, str], dict[int, EvalRun]] = {}
    for path in sorted(Path(run_dir).glob(f"{EXPLAINER_EVAL_DIR}/*/seed*/*.json")):
        method, seed, benchmark, split, slug = parse_explainer_eval_path(path)
        summary, cases = read_cases(path)
        run = EvalRun(method, seed, benchmark, split, path, summary, cases)
        results.setdefault((method, benchmark, split, slug), {})[seed] = run
    return results


def _paired(a: np.ndarray, b: np.ndarray, n_boot: int) -> dict[str, float]:
    paired = stats.paired_bootstrap(a, b, n_boot=n_boot)
    return {"diff": paired.diff, "low": paired.low, "high": paired.high, "p": paired.p_value}


def explainer_frame(
    results: dict[tuple[str, str, str, str], dict[int, EvalRun]], config: dict, n_boot: int = 10000
) -> pd.DataFrame:
    """One row per (explainer, method, split): pointing accuracy and mean energy in the boxes, each
    with its 95% bootstrap interval (cases, and seeds when several), and each paired with the
    reference method (``explainers.reference``) under the same explainer on the same cases.

    Energy: a case whose map has no positive mass counts 0 (``energy_undefined`` counts them,
    over all seeds)."""
    spec = config.get("explainers") or {}
    grid = config.get("grid") or {}
    reference = spec.get("reference")
    listed = [e["slug"] for e in config.get("explainer_list") or []]
    found = {key[3] for key in results}
    slugs = [s for s in listed if s in found] + sorted(found - set(listed))
    methods = [m for m in spec.get("methods") or [] if m in {key[0] for key in results}]
    methods += sorted({key[0] for key in results} - set(methods))
    splits = list(dict.fromkeys((key[1], key[2]) for key in sorted(results, key=lambda k: (k[1], k[2]))))
    rows = []
    for slug in slugs:
        for method in methods:
            for benchmark, split in splits:
                by_seed = results.get((method, benchmark, split, slug))
                if not by_seed:
                    continue
                hits, ids = hit_matrix(by_seed)
                energy, _ = case_matrix(by_seed, "energy", ids)
                pointing = stats.bootstrap_ci(hits, n_boot=n_boot)
                mass = stats.bootstrap_ci(energy, n_boot=n_boot)
                explainer = by_seed[min(by_seed)].summary.get("explainer") or {}
                record = {
                    "explainer": slug,
                    "explainer_name": explainer.get("name", slug),
                    "layer": explainer.get("layer", math.nan),
                    "method": method,
                    "label": grid.get(method, {}).get("label", method),
                    "benchmark": benchmark,
                    "split": split,
                    "n_seeds": pointing.n_seeds,
                    "n_cases": pointing.n_cases,
                    "accuracy": 100 * pointing.mean,
                    "low": 100 * pointing.low,
                    "high": 100 * pointing.high,
                    "energy": 100 * mass.mean,
                    "energy_low": 100 * mass.low,
                    "energy_high": 100 * mass.high,
                    "energy_undefined": int(
                        sum(run.cases["energy"].isna().sum() for run in by_seed.values())
                    ),
                    "reference": reference or "",
                }
                for metric in ("accuracy", "energy"):
                    for suffix in ("diff", "diff_low", "diff_high", "p"):
                        record[f"{metric}_{suffix}"] = math.nan
                ref_by_seed = results.get((reference, benchmark, split, slug)) if reference else None
                if ref_by_seed and method != reference:
                    for metric, mine, column in (("accuracy", hits, "hit"), ("energy", energy, "energy")):
                        theirs, _ = case_matrix(ref_by_seed, column, ids)
                        paired = _paired(mine, theirs, n_boot)
                        record.update(
                            {
                                f"{metric}_diff": 100 * paired["diff"],
                                f"{metric}_diff_low": 100 * paired["low"],
                                f"{metric}_diff_high": 100 * paired["high"],
                                f"{metric}_p": paired["p"],
                            }
                        )
                rows.append(record)
    return pd.DataFrame(rows)


def write_explainers(
    frame: pd.DataFrame, run_dir: str | Path, run_name: str, reference: str | None
) -> list[Path]:
    """``tables/explainers.csv``, ``.md`` and ``.tex`` under the run's results folder ``run_dir``."""
    versus = f"vs {reference}" if reference else "vs reference"
    header = [
        "Explainer",
        "Method",
        "Split",
        "Seeds",
        "Pointing [95% CI]",
        f"Δ pointing {versus} [95% CI]",
        "p",
        "Energy [95% CI]",
        f"Δ energy {versus} [95% CI]",
        "p",
        "No positive mass",
    ]

    def difference(row, metric: str) -> str:
        if math.isnan(row[f"{metric}_diff"]):
            return "–"
        return f"{row[f'{metric}_diff']:+.2f} [{row[f'{metric}_diff_low']:+.2f}, {row[f'{metric}_diff_high']:+.2f}]"

    rows = [
        [
            str(r["explainer"]),
            str(r["label"]),
            f"{r['benchmark']} {r['split']}",
            str(int(r["n_seeds"])),
            f"{r['accuracy']:.2f} [{r['low']:.2f}, {r['high']:.2f}]",
            difference(r, "accuracy"),
            fmt_p(r["accuracy_p"]),
            f"{r['energy']:.2f} [{r['energy_low']:.2f}, {r['energy_high']:.2f}]",
            difference(r, "energy"),
            fmt_p(r["energy_p"]),
            str(int(r["energy_undefined"])),
        ]
        for _, r in frame.iterrows()
    ]
    note = (
        f"Run `{run_name}`. Every map goes through the same pointing protocol (bicubic upsampling to the "
        "original size, first maximum, strictly inside a box). Pointing: accuracy (%); energy: the share (%) "
        "of the map's positive mass inside the union of the case's boxes, a map without positive mass "
        "counting 0 (last column: how many, over all seeds). Mean over seeds with a 95% bootstrap interval "
        f"over cases (and seeds when several); Δ: paired difference with {reference or 'the reference'} "
        "under the same explainer on the same cases (points; per-case values averaged over seeds; 95% "
        "paired bootstrap interval, two-sided p-value). gradcam-layerK: GradCAM at fusion layer K; "
        "attention-layerK: raw cross-attention; gradcam-mean: GradCAM averaged over the fusion layers; "
        "rollout: attention rollout through the fusion layers (docs/workflow.md)."
    )
    paths = table_paths(run_dir, "explainers")
    atomic_write_text(paths[0], frame.to_csv(index=False, float_format="%.4f"))
    atomic_write_text(
        paths[1],
        "# Explainers: does the model ground, or only its GradCAM?\n\n"
        + markdown_table(header, rows)
        + "\n"
        + note
        + "\n",
    )
    atomic_write_text(paths[2], latex_table(header, rows, note, "tab:explainers"))
    return paths
