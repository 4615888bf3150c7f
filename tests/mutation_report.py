"""The kill rate of a ``make mutation`` run, per module, from mutmut's files in ``mutants/``.

    python -m tests.mutation_report [--survivors]

Killed counts mutants a test failed on; a timeout (a test ran past mutmut's limit) is listed
apart and counts as a kill in the rate. "Worker min" is the time a worker spent on the module's
mutants (their test runs added up; two workers share the wall-clock time). ``--survivors`` lists every mutant that survived or had no test, by
name (``mutmut show NAME`` prints its diff); ``--diffs`` adds each one's changed lines, read from the
mutated copy (what ``docs/testing.md`` groups into reasons).
"""

from __future__ import annotations

import argparse
import ast
import difflib
import json
import tomllib
from collections import Counter
from pathlib import Path

# mutmut 3's exit codes of a mutant's test run (mutmut.stats.status_by_exit_code).
STATUS = {
    1: "killed",
    3: "killed",
    0: "survived",
    5: "no tests",
    33: "no tests",
    34: "skipped",
    36: "timeout",
}
STATUS.update(
    {-24: "timeout", 24: "timeout", 152: "timeout", 255: "timeout", -11: "segfault", -9: "segfault"}
)
STATUS[None] = "not run"
COLUMNS = ("killed", "timeout", "survived", "no tests", "not run")


def mutated_modules(pyproject: Path = Path("pyproject.toml")) -> list[str]:
    """The modules ``make mutation`` mutates: [tool.mutmut] only_mutate, in its order."""
    return tomllib.loads(pyproject.read_text())["tool"]["mutmut"]["only_mutate"]


def module_metas(mutants: Path, modules: list[str]) -> dict[str, dict]:
    """{module path: mutmut's ``.meta`` record} for each of ``modules`` that has results in ``mutants``."""
    paths = {module: mutants / f"{module}.meta" for module in modules}
    return {module: json.loads(path.read_text()) for module, path in paths.items() if path.exists()}


def mutant_statuses(meta: dict) -> dict[str, str]:
    """{mutant name: status} of one module's record."""
    return {name: STATUS.get(code, "suspicious") for name, code in meta["exit_code_by_key"].items()}


def worker_seconds(meta: dict) -> float:
    """The seconds one module's mutants' test runs took, added up."""
    return sum(meta.get("durations_by_key", {}).values())


def table(results: dict[str, dict[str, str]], seconds: dict[str, float]) -> str:
    lines = [
        "| module | mutants | " + " | ".join(COLUMNS) + " | kill rate | worker min |",
        "|---|---:|" + "---:|" * len(COLUMNS) + "---:|---:|",
    ]
    total: Counter = Counter()
    for module, statuses in results.items():
        counts = Counter(statuses.values())
        total.update(counts)
        lines.append(_row(f"`{module}`", counts, seconds.get(module, 0.0)))
    lines.append(_row("**all**", total, sum(seconds.get(module, 0.0) for module in results)))
    return "\n".join(lines)


def _row(name: str, counts: Counter, seconds: float) -> str:
    """A table row; the kill rate counts a timeout as a kill (the mutant made a test hang)."""
    run = sum(counts.values()) - counts["not run"]
    rate = f"{100 * (counts['killed'] + counts['timeout']) / run:.1f}%" if run else "-"
    cells = " | ".join(str(counts[c]) for c in COLUMNS)
    return f"| {name} | {sum(counts.values())} | {cells} | {rate} | {seconds / 60:.1f} |"


def function_sources(path: Path) -> dict[str, str]:
    """Every function of a mutated file (mutmut writes each mutant as a function of its own) by name."""
    text = path.read_text()
    lines = text.splitlines()
    return {
        node.name: "\n".join(lines[node.lineno - 1 : node.end_lineno])
        for node in ast.walk(ast.parse(text))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
    }


def mutant_diff(sources: dict[str, str], name: str) -> list[str]:
    """The lines mutant ``name`` changes (``-`` original, ``+`` mutated)."""
    mutant_name = name.split(".")[-1]
    original_name = mutant_name.rsplit("__mutmut_", 1)[0] + "__mutmut_orig"
    original = sources.get(original_name, "")
    # the same name on both sides, so that a mutant of the ``def`` line (a default) shows
    mutated = sources.get(mutant_name, "").replace(mutant_name, original_name, 1)
    lines = difflib.unified_diff(original.splitlines(), mutated.splitlines(), lineterm="", n=0)
    return [line.strip() for line in lines if line[:1] in "-+" and line[:3] not in ("---", "+++")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.mutation_report", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--mutants", default="mutants", help="mutmut's folder (default: mutants)")
    parser.add_argument("--survivors", action="store_true", help="list the mutants no test killed")
    parser.add_argument("--diffs", action="store_true", help="with --survivors: each one's changed lines")
    args = parser.parse_args(argv)
    metas = module_metas(Path(args.mutants), mutated_modules())
    if not metas:
        parser.error(f"{args.mutants}: no mutmut results (run make mutation first)")
    results = {module: mutant_statuses(meta) for module, meta in metas.items()}
    print(table(results, {module: worker_seconds(meta) for module, meta in metas.items()}))
    if args.survivors:
        for module, statuses in results.items():
            sources = function_sources(Path(args.mutants) / module) if args.diffs else {}
            for name, status in statuses.items():
                if status in ("survived", "no tests", "timeout", "suspicious"):
                    print(f"{status}\t{name}")
                    for line in mutant_diff(sources, name) if args.diffs else []:
                        print(f"\t\t{line}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
