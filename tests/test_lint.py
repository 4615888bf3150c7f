"""`make lint`'s snakemake step (.ci/snakemake_lint.py): kept findings pass, any other fails."""

import importlib.util
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO


def _load():
    spec = importlib.util.spec_from_file_location("snakemake_lint", REPO / ".ci" / "snakemake_lint.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


lint = _load()

OUTPUT = """\
Lints for snakefile /repo/workflow/rules/common.smk:
    * Path composition with '+' in line 97:
      This becomes quickly unreadable.

Lints for rule download_x (line 41, /repo/workflow/rules/data.smk):
    * Specify a conda environment or container for each rule.:
      This way, the used software for each specific step is documented.
    * Param dest is a prefix of input or output file but hardcoded:
      If this is meant to represent a file path prefix, ...
    * Param records is a prefix of input or output file but hardcoded:
      If this is meant to represent a file path prefix, ...
"""


def test_findings_are_parsed_and_only_the_listed_ones_are_accepted():
    findings = lint.parse_lints(OUTPUT)
    assert [f.title for f in findings] == [
        "Path composition with '+' in line 97",
        "Specify a conda environment or container for each rule.",
        "Param dest is a prefix of input or output file but hardcoded",
        "Param records is a prefix of input or output file but hardcoded",
    ]
    left = lint.unaccepted(findings)
    assert [f.title for f in left] == [
        "Path composition with '+' in line 97",
        "Param records is a prefix of input or output file but hardcoded",
    ]
    assert left[1].where == "rule download_x (line 41, /repo/workflow/rules/data.smk)"


@pytest.mark.subprocess
@pytest.mark.slow
@pytest.mark.timeout(120)
def test_the_workflow_passes_snakemake_lint():
    if not (Path(sys.executable).parent / "snakemake").exists():
        pytest.skip("snakemake is not installed beside this Python")
    assert lint.main(["config/demo.yaml"]) == 0
