"""`snakemake --lint` on the workflow, for each configuration given; part of `make lint`.

Usage: python .ci/snakemake_lint.py config/config.yaml config/demo.yaml

Snakemake's linter has no way to silence a finding in the Snakefile, so the findings this
workflow keeps on purpose are listed here, each with the reason the suggested fix would be
wrong. Any other finding, or a workflow that does not load, fails (exit 1).
"""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Path-valued params the rules pass on although an input or output starts with them.
# Snakemake suggests deriving them from the input/output, which would be wrong here: each is
# the folder a command works in (`amc download --dest`, `amc prepare --root/--images`, `amc
# synth --out`, `amc report --run`), not a prefix of one file, or the file inside a downloaded
# folder the rule depends on (`vocab`: the input is the artifact's folder, raw_input()). The
# linter's concern, storage without a shared filesystem, does not arise: the workflow runs on a
# shared filesystem (docs/workflow.md, "Interruptions and failures"), and the downloads are local rules.
FOLDER_PARAMS = {"dest", "root", "images", "out", "run", "vocab"}

ACCEPTED: dict[str, str] = {
    # Every rule runs the `amc` command of the one environment the workflow itself runs in (the
    # Makefile's venv or environment.yml, which installs this package with pip -e); a per-rule
    # conda env would have to install the package under test again, and a container would pin a
    # copy of it. Neither documents more than pyproject.toml does.
    "Specify a conda environment or container for each rule.": "one environment for the workflow",
    **{
        f"Param {name} is a prefix of input or output file but hardcoded": "a folder, not a prefix"
        for name in sorted(FOLDER_PARAMS)
    },
}


@dataclass(frozen=True)
class Finding:
    where: str  # "rule NAME (line N, FILE)" or "snakefile FILE"
    title: str


def parse_lints(text: str) -> list[Finding]:
    """The findings of `snakemake --lint`'s plain-text output (its --lint=json is ignored by 9.x)."""
    findings: list[Finding] = []
    where = None
    for line in text.splitlines():
        header = re.match(r"Lints for (.+):$", line)
        if header:
            where = header.group(1)
            continue
        item = re.match(r"    \* (.+?):?$", line)
        if item and where is not None:
            findings.append(Finding(where, item.group(1)))
    return findings


def unaccepted(findings: list[Finding]) -> list[Finding]:
    return [f for f in findings if f.title not in ACCEPTED]


def lint(configfile: str) -> list[Finding]:
    """Lint the workflow with ``configfile``; the findings not accepted above."""
    snakemake = Path(sys.executable).parent / "snakemake"
    command = [str(snakemake), "--lint", "--snakefile", "Snakefile", "--configfile", configfile]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    output = done.stdout + done.stderr
    findings = parse_lints(output)
    if done.returncode != 0 and not findings:
        raise SystemExit(f"snakemake --lint failed with {configfile}:\n{output}")
    return unaccepted(findings)


def main(argv: list[str]) -> int:
    if not argv:
        raise SystemExit(__doc__)
    failed = False
    for configfile in argv:
        left = lint(configfile)
        for finding in left:
            print(f"{configfile}: {finding.where}: {finding.title}")
        failed = failed or bool(left)
        print(f"snakemake --lint --configfile {configfile}: {'FAILED' if left else 'ok'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
