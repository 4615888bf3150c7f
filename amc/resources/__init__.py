"""Files the commands read, shipped inside the package (found with ``importlib.resources``).

This folder is the one copy of each: the workflow and the configurations name these paths
too (``amc/resources/...`` from the repository root), so a checkout and an installed wheel
read the same file.

* ``manifest.yaml``: the download manifest of the paper reproduction (``amc download``);
* ``synthetic-manifest.yaml``: the download manifest of the synthetic runs (demo, ci);
* ``config.schema.yaml``: the workflow configuration's JSON Schema (every key, its default);
* ``result.schema.json``: the JSON Schema of an ``amc evaluate`` result file.
"""

from __future__ import annotations

from importlib.resources import files
from importlib.resources.abc import Traversable

MANIFEST = "manifest.yaml"
CONFIG_SCHEMA = "config.schema.yaml"
RESULT_SCHEMA = "result.schema.json"


def resource(name: str) -> Traversable:
    """The shipped file ``name`` (a real path in a regular install or a checkout)."""
    return files(__name__).joinpath(name)
