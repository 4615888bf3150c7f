"""Print where a run's Table 1, figures and HTML report are (``make demo`` ends with it).

python -m amc.report.where --config config/demo.yaml
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from amc.grid import FIGURES_DIR, table_paths

TABLES = ("table1", "table1_released", "ablation", "explainers")


def locate(config_path: str) -> dict[str, list[Path]]:
    with open(config_path, encoding="utf-8") as handle:
        run = (yaml.safe_load(handle) or {}).get("run", "reproduction")
    root = Path("results") / run
    figures = sorted((root / FIGURES_DIR).glob("*.png"))
    return {
        "run": [root],
        # the Markdown first: it is what is shown
        **{name: table_paths(root, name, ("md", "csv", "tex")) for name in TABLES},
        "figures": figures,
        "report": [root / "report.html"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m amc.report.where", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--config", default="config/config.yaml", help="the workflow configuration of the run"
    )
    args = parser.parse_args(argv)
    places = locate(args.config)
    root = places["run"][0]
    out = sys.stdout
    out.write(f"\nResults of run '{root.name}' ({root}/):\n")
    table1 = places["table1"][0]
    if table1.is_file():
        out.write(f"  Table 1:   {table1}  (also .csv, .tex)\n\n")
        out.write(table1.read_text(encoding="utf-8") + "\n")
    else:
        out.write(f"  Table 1:   {table1}  (not made yet)\n")
    released = places["table1_released"][0]
    if released.is_file():  # snakemake released: the untrained rows only
        out.write(f"  Table 1, released checkpoints (snakemake released): {released}\n\n")
        if not table1.is_file():
            out.write(released.read_text(encoding="utf-8") + "\n")
    ablation = places["ablation"][0]
    out.write(f"  Ablations: {ablation}{'' if ablation.is_file() else '  (not made yet)'}\n")
    explainers = places["explainers"][0]
    if explainers.is_file():  # config explainers.enabled
        out.write(f"  Explainers: {explainers}\n")
    out.write(f"  Figures:   {root / FIGURES_DIR}/\n")
    for figure in places["figures"]:
        out.write(f"             {figure}  (+ .pdf)\n")
    report = places["report"][0]
    if report.is_file():
        out.write(f"  Report:    {report}\n")
    else:
        out.write(
            f"  Report:    {report}  (not made yet: snakemake all --configfile {args.config} writes it)\n"
        )
    out.write("  Notebook:  jupyter lab notebooks/analysis.ipynb  (set RUN at its top)\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
