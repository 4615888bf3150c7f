"""The layout of an ``amc evaluate`` result file, its version and its JSON Schema.

``amc evaluate --out`` writes ``{"format": RESULT_FORMAT, "summary": {...}, "cases": [...]}``;
``amc/resources/result.schema.json`` (package data) describes it, and every reader (the reports,
the notebook, :func:`amc.evaluate.load_result`) validates a file against it before using it, so
a file of another version or a hand-edited one is refused with the file and the place named.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

from amc.io import DataError, read_json
from amc.resources import RESULT_SCHEMA, resource

RESULT_FORMAT = "amc-bench-result/1"


@functools.cache
def result_schema() -> dict:
    return json.loads(resource(RESULT_SCHEMA).read_text(encoding="utf-8"))


@functools.cache
def _validator():
    # fastjsonschema compiles the schema to Python: ~10x faster than jsonschema on a result of
    # 15,000 cases (0.2 s against 2 s), which matters when a report reads a hundred of them.
    import fastjsonschema

    return fastjsonschema.compile(result_schema())


def validate_result(data: object, source: str | Path) -> dict:
    """``data`` when it is a result of this version; a :class:`DataError` naming ``source`` and the place."""
    if isinstance(data, dict) and data.get("format") != RESULT_FORMAT and "summary" in data:
        raise DataError(
            f"{source}: result format {data.get('format')!r}, this version reads {RESULT_FORMAT!r} "
            "(evaluate again with this version of amc evaluate)"
        )
    from fastjsonschema import JsonSchemaValueException

    try:
        _validator()(data)
    except JsonSchemaValueException as error:
        raise DataError(f"{source}: not an amc evaluate result: {error.message}") from None
    return data  # type: ignore[return-value]


def read_result(path: str | Path) -> dict:
    """Read and validate a result file."""
    return validate_result(read_json(path), path)
