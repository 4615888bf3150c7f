"""The rules the suite keeps (docs/testing.md): shared fixtures live in conftest.py only, no test
module imports another, and a test that starts a program says so with the `subprocess` marker."""

from __future__ import annotations

import ast

import pytest

from tests.helpers import REPO

pytest_plugins = ["pytester"]

TESTS = REPO / "tests"


def test_no_test_module_imports_another_and_fixtures_live_in_conftest():
    for path in sorted(TESTS.glob("test_*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                assert not node.module.split(".")[-1].startswith("test_"), (
                    f"{path.name} imports {node.module}"
                )
            if isinstance(node, ast.Import):
                for alias in node.names:
                    assert not alias.name.split(".")[-1].startswith("test_"), (
                        f"{path.name} imports {alias.name}"
                    )
    for path in sorted(TESTS.glob("*.py")):
        if path.name.startswith("test_") or path.name == "conftest.py":
            continue
        assert "@pytest.fixture" not in path.read_text(), f"{path.name} defines a fixture outside conftest.py"


PROBE = """
import subprocess, sys
import pytest

def test_unmarked_python():
    subprocess.run([sys.executable, "-c", "pass"], check=True)

@pytest.mark.subprocess
def test_marked_python():
    subprocess.run([sys.executable, "-c", "pass"], check=True)

def test_unmarked_git():
    subprocess.run(["git", "--version"], capture_output=True)
"""


@pytest.mark.subprocess
def test_a_test_that_starts_a_program_without_the_marker_fails_naming_it(pytester):
    pytester.makeconftest("from tests.conftest import _processes_need_the_subprocess_marker  # noqa: F401\n")
    pytester.makeini("[pytest]\nmarkers =\n    subprocess: starts a program\n")
    pytester.makepyfile(test_probe=PROBE)
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=3, errors=1)
    output = result.stdout.str()
    assert "ERROR test_probe.py::test_unmarked_python - Failed" in output
    assert "Failed: started ['python'] without @pytest.mark.subprocess" in output
