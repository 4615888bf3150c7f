"""The rules the suite keeps (docs/testing.md): shared fixtures live in conftest.py only, no test
module imports another, and a test that starts a program says so with the `subprocess` marker."""

from __future__ import annotations

import ast
import json
import re

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


SLOW_PROBE = """
import time
import pytest

@pytest.fixture
def slow_setup():
    time.sleep(1.0)  # the limit is the call's: set-up is not timed

def test_second():
    pass

def test_looping():
    time.sleep(30)

def test_first(slow_setup):
    pass
"""


def test_under_mutation_tests_run_fastest_first_each_with_its_own_time_limit(pytester, monkeypatch):
    """A mutant's tests run in the order of their clean durations, and one that runs past
    MUTANT_TEST_SLOWDOWN x its clean duration + MUTANT_TEST_MARGIN_S fails (make mutation)."""
    import tests.conftest

    monkeypatch.setattr(tests.conftest, "MUTANT_TEST_MARGIN_S", 0.5)  # a 0.8 s limit for the looping test
    monkeypatch.setenv("MUTANT_UNDER_TEST", "amc.losses.x_amc_loss__mutmut_1")
    pytester.makeconftest("from tests.conftest import pytest_collection_modifyitems  # noqa: F401\n")
    pytester.makepyfile(test_probe=SLOW_PROBE)
    durations = {
        "test_probe.py::test_first": 0.01,
        "test_probe.py::test_looping": 0.1,
        "test_probe.py::test_second": 0.2,
    }
    (pytester.path / "mutmut-stats.json").write_text(json.dumps({"duration_by_test": durations}))
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "-v")
    result.assert_outcomes(passed=2, failed=1)
    output = result.stdout.str()
    order = [
        output.index(f"test_probe.py::{name} ") for name in ("test_first", "test_looping", "test_second")
    ]
    assert order == sorted(order)
    assert "FAILED test_probe.py::test_looping" in output
    assert "Failed: Timeout (>0.8s) from pytest-timeout." in output
    monkeypatch.delenv("MUTANT_UNDER_TEST")  # a plain run: the file's order, no limits
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "-v", "-k", "not looping")
    output = result.stdout.str()
    assert output.index("test_probe.py::test_second ") < output.index("test_probe.py::test_first ")


SETUP_PROBE = """
import time
import pytest

@pytest.fixture(scope="module")
def costly():
    time.sleep(0.5)

def test_after_a_costly_set_up(costly):
    pass
"""


class _CallDurations:
    """What mutmut's clean run records of each test: the duration of its call report."""

    def __init__(self):
        self.seconds = {}

    def pytest_runtest_makereport(self, item, call):
        if call.when == "call":
            self.seconds[item.name] = call.duration


@pytest.mark.parametrize(("mutant", "at_least"), [("stats", 0.5), ("", 0.0)])
def test_mutmuts_recorded_duration_includes_the_fixtures_set_up(pytester, monkeypatch, mutant, at_least):
    monkeypatch.setenv("MUTANT_UNDER_TEST", mutant)
    pytester.makeconftest(
        "from tests.conftest import pytest_runtest_makereport, pytest_runtest_setup  # noqa: F401\n"
    )
    pytester.makepyfile(test_probe=SETUP_PROBE)
    recorder = _CallDurations()
    pytester.runpytest_inprocess("-p", "no:cacheprovider", plugins=[recorder]).assert_outcomes(passed=1)
    seconds = recorder.seconds["test_after_a_costly_set_up"]
    assert seconds >= at_least and (mutant == "stats" or seconds < 0.5)


# `# pragma: no mutate (reason)` (or `block`, `start`, `end` before the reason): a line mutmut
# leaves alone, and why. docs/testing.md defines each reason.
PRAGMA = re.compile(r"#\s*pragma:\s*no mutate\b(?P<tail>.*)")
REASON = re.compile(r"^(?:block |start |end )?\((?P<reason>[a-z]+)\)$")


def test_every_line_kept_from_mutation_gives_a_reason_the_testing_doc_defines():
    from tests.mutation_report import mutated_modules

    doc = (REPO / "docs" / "testing.md").read_text()
    kept: list[str] = []
    for module in mutated_modules(REPO / "pyproject.toml"):
        for number, line in enumerate((REPO / module).read_text().splitlines(), start=1):
            if not (pragma := PRAGMA.search(line)):
                continue
            where = f"{module}:{number}"
            reason = REASON.match(pragma["tail"].strip())
            assert reason, f"{where}: the pragma gives no reason in parentheses: {line.strip()}"
            assert f"`# pragma: no mutate ({reason['reason']})`" in doc, (
                f"{where}: docs/testing.md does not define the reason ({reason['reason']})"
            )
            kept.append(where)
    # the device and multi-process lines of the training loop, evaluation and the objectives
    assert len(kept) >= 20, kept


def test_the_mutation_report_counts_each_module_and_its_worker_minutes(tmp_path, capsys):
    from tests import mutation_report

    meta = {
        "exit_code_by_key": {"amc.losses.x_f__mutmut_1": 1, "amc.losses.x_f__mutmut_2": 0,
                             "amc.losses.x_f__mutmut_3": -24, "amc.losses.x_f__mutmut_4": None},
        "durations_by_key": {"amc.losses.x_f__mutmut_1": 30.0, "amc.losses.x_f__mutmut_2": 60.0,
                             "amc.losses.x_f__mutmut_3": 90.0},
    }  # fmt: skip
    (tmp_path / "amc").mkdir()
    (tmp_path / "amc" / "losses.py.meta").write_text(json.dumps(meta))
    assert mutation_report.main(["--mutants", str(tmp_path)]) == 0
    rows = capsys.readouterr().out.splitlines()
    # killed, timeout, survived, no tests, not run; the rate of those run, a timeout a kill
    assert "| `amc/losses.py` | 4 | 1 | 1 | 1 | 0 | 1 | 66.7% | 3.0 |" in rows
    assert "| **all** | 4 | 1 | 1 | 1 | 0 | 1 | 66.7% | 3.0 |" in rows


def test_the_mutation_report_shows_a_mutant_of_a_default_argument():
    from tests import mutation_report

    sources = {
        "x_f__mutmut_orig": "def x_f__mutmut_orig(a, b=0):\n    return a + b",
        "x_f__mutmut_1": "def x_f__mutmut_1(a, b=1):\n    return a + b",
        "x_f__mutmut_2": "def x_f__mutmut_2(a, b=0):\n    return a - b",
    }
    assert mutation_report.mutant_diff(sources, "amc.m.x_f__mutmut_1") == [
        "-def x_f__mutmut_orig(a, b=0):",
        "+def x_f__mutmut_orig(a, b=1):",
    ]
    assert mutation_report.mutant_diff(sources, "amc.m.x_f__mutmut_2") == [
        "-    return a + b",
        "+    return a - b",
    ]
