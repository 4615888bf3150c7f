"""The fixtures every test module shares; plain helpers (the tiny model and batch, file writers) are
in tests/helpers.py. Tests that train or change a model make their own with ``helpers.tiny_model``.

``AMC_TEST_CI_DATA=<folder>`` keeps the ci dataset in that folder across test sessions (made
once; ``make mutation`` uses it so that each mutant's session does not synthesise it again).
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from pathlib import Path

import pytest
import torch

from tests.helpers import REPO, CiData, build_ci_data, tiny_config

# One intra-op thread (children started by the tests inherit it): the tiny models gain nothing
# from more, and on a busy 2-core machine threads fighting other processes' make tests many times slower.
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


_SETUP_SECONDS = pytest.StashKey[float]()

# Under ``make mutation``, a test whose call runs this many times its clean duration, plus the
# margin, fails (pytest-timeout): the mutant made it loop or crawl.
MUTANT_TEST_SLOWDOWN, MUTANT_TEST_MARGIN_S = 3.0, 5.0


def pytest_collection_modifyitems(config, items):
    """Under ``make mutation``, a mutant's tests run fastest first, each with a time limit of its own.

    mutmut stops at the first test that fails, and the mutant's tests come in no particular order.
    mutmut's own limit is for all of a mutant's tests together: a mutant that makes the first test
    loop would hold a worker for that whole limit (a minute and more for the training loop's
    mutants); a limit per test fails it after a few times its own duration. The durations are those
    of mutmut's clean run (``mutmut-stats.json`` in the mutated copy, the tests' working folder)."""
    if "__mutmut_" not in os.environ.get("MUTANT_UNDER_TEST", ""):
        return
    stats = Path("mutmut-stats.json")
    if stats.exists():
        durations = json.loads(stats.read_text())["duration_by_test"]
        items.sort(key=lambda item: durations.get(item.nodeid, 0.0))
        for item in items:
            if item.nodeid in durations:
                limit = MUTANT_TEST_SLOWDOWN * durations[item.nodeid] + MUTANT_TEST_MARGIN_S
                # the call only: a module fixture's set-up is in the recorded duration of the test
                # that first needed it in the clean run, which need not be the first to need it here
                item.add_marker(pytest.mark.timeout(limit, method="signal", func_only=True), append=False)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item):
    start = time.perf_counter()
    yield
    item.stash[_SETUP_SECONDS] = time.perf_counter() - start


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_makereport(item, call):
    """In mutmut's clean run (``MUTANT_UNDER_TEST=stats``), a test's recorded duration includes its
    fixtures' set-up: mutmut records only the call, and limits a mutant's run to 1.5 x the sum of
    those durations (+ 3 s), so tests with a costly fixture (a module's training run) made mutants
    that change nothing run past the limit and count as killed (timeouts)."""
    if call.when == "call" and os.environ.get("MUTANT_UNDER_TEST") == "stats":
        call.duration += item.stash.get(_SETUP_SECONDS, 0.0)


@pytest.fixture(autouse=True, scope="session")
def _progress_bar_lock_of_this_process():
    """tqdm serialises its writes with a lock shared by every process forked after its first use.
    ``make mutation`` forks one process per mutant and kills those that overrun: one killed while
    writing a progress bar would leave every later mutant's progress bar waiting (and counted as a
    timeout, i.e. killed). A lock of this process's own threads keeps the mutants independent."""
    from tqdm import tqdm

    tqdm.set_lock(threading.RLock())


# Programs a test may start without the `subprocess` marker: `git` (the evaluation records the
# checkout's commit).
UNMARKED_PROGRAMS = {"git"}


@pytest.fixture(autouse=True)
def _processes_need_the_subprocess_marker(request, monkeypatch):
    """A test that starts another program (the amc CLI, snakemake, python, pdflatex) must say so with
    the `subprocess` marker: mutation testing selects tests without it as in-process, and
    `make test-fast` runs only those. The test fails after it ran, naming the programs it started."""
    if request.node.get_closest_marker("subprocess"):
        yield
        return
    started: set[str] = set()
    real_init = subprocess.Popen.__init__

    def recording_init(self, args, *rest, **kwargs):
        program = args[0] if isinstance(args, (list, tuple)) else str(args).split()[0]
        started.add(Path(str(program)).name)
        real_init(self, args, *rest, **kwargs)

    monkeypatch.setattr(subprocess.Popen, "__init__", recording_init)
    yield
    if started - UNMARKED_PROGRAMS:
        pytest.fail(f"started {sorted(started - UNMARKED_PROGRAMS)} without @pytest.mark.subprocess")


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def ci_data(tmp_path_factory) -> CiData:
    """The ``ci`` synthetic benchmark and its records (VG train, Flickr30k test, RefCOCO+ testA)."""
    kept = os.environ.get("AMC_TEST_CI_DATA")
    return build_ci_data(Path(kept) if kept else tmp_path_factory.mktemp("ci-data"))


@pytest.fixture(scope="session")
def random_checkpoint(tmp_path_factory) -> Path:
    """A checkpoint of the tiny model at its initialisation (seed 0), for the evaluation tests."""
    from amc.models.albef import ALBEF
    from amc.models.checkpoint import save_checkpoint

    torch.manual_seed(0)
    model = ALBEF(tiny_config())
    model.copy_params()
    path = tmp_path_factory.mktemp("checkpoint") / "random.pt"
    save_checkpoint(path, model)
    return path


@pytest.fixture
def server():
    """A local HTTP server (tests/http_fixtures.py) for the downloader's tests; stopped after the test."""
    from tests.http_fixtures import FileServer

    srv = FileServer().start()
    yield srv
    srv.stop()
