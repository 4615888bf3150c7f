"""Shared test fixtures. Test modules keep their own fixtures unless several need them."""

from __future__ import annotations

import os

import pytest

# Keep tests reproducible and light on the 2-core CI machine.
os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture(scope="session")
def repo_root():
    from pathlib import Path

    return Path(__file__).resolve().parent.parent
