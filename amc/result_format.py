"""The ``amc evaluate`` result file: its layout, its version and its one validator.

``amc evaluate --out`` writes ``{"format": RESULT_FORMAT, "summary": {...}, "cases": [...]}``;
``amc/resources/result.schema.json`` (package data) describes it. Every reader (the reports, the
notebook, model selection) goes through :func:`read_result`,
which checks the file where it enters: the schema (a case's ``hit`` is a JSON boolean, so the
string ``"false"`` is not a miss counted as a hit; a file of another version is refused), then
what a schema cannot say: every number finite, at least one case, no case id twice, and the
summary's counts and accuracy agreeing with the cases. Errors name the file and the place.
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass, field

from amc.io import DataError, find_non_finite, place_text, read_json
from amc.resources import RESULT_SCHEMA, resource

RESULT_FORMAT = "amc-bench-result/1"


@dataclass
class CaseResult:
    id: str
    point: list[int]
    hit: bool
    miss: str | None
    category: str | None = None
    box_hit: bool | None = None
    # share of the map's positive mass inside the union of the boxes; None: the map has none
    energy: float | None = None


@dataclass
class EvaluationResult:
    summary: dict
    cases: list[CaseResult] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"format": RESULT_FORMAT, "summary": self.summary, "cases": [vars(c) for c in self.cases]}


@functools.cache
def result_schema() -> dict:
    return json.loads(resource(RESULT_SCHEMA).read_text(encoding="utf-8"))


@functools.cache
def _validator():
    # fastjsonschema compiles the schema to Python: ~10x faster than jsonschema on a result of
    # 15,000 cases (0.2 s against 2 s), which matters when a report reads a hundred of them.
    import fastjsonschema

    return fastjsonschema.compile(result_schema())


def validate_result(data: object, source: str | os.PathLike) -> dict:
    """``data`` when it is a sound result of this version; a :class:`DataError` naming ``source`` and the place."""
    if isinstance(data, dict) and data.get("format") != RESULT_FORMAT and "summary" in data:
        raise DataError(
            f"{source}: result format {data.get('format')!r}, this version reads {RESULT_FORMAT!r} "
            "(evaluate again with this version of amc evaluate)"
        )
    from fastjsonschema import JsonSchemaValueException

    if (found := find_non_finite(data)) is not None:
        raise DataError(f"{source}: {place_text('result', found[0])} is {found[1]}, not a finite number")
    try:
        _validator()(data)
    except JsonSchemaValueException as error:
        raise DataError(f"{source}: not an amc evaluate result: {error.message}") from None
    assert isinstance(data, dict)  # the schema says so
    summary, cases = data["summary"], data["cases"]
    ids = [case["id"] for case in cases]
    if len(set(ids)) != len(ids):
        duplicate = next(i for i in ids if ids.count(i) > 1)
        raise DataError(f"{source}: case id {duplicate!r} appears more than once")
    hits = sum(case["hit"] for case in cases)
    if summary["n_cases"] != len(cases) or summary["n_hits"] != hits:
        raise DataError(
            f"{source}: summary says {summary['n_hits']} hits of {summary['n_cases']} cases, "
            f"the cases hold {hits} of {len(cases)}"
        )
    if abs(summary["accuracy"] - hits / len(cases)) > 1e-9:
        raise DataError(
            f"{source}: summary.accuracy {summary['accuracy']} is not n_hits / n_cases = {hits / len(cases)}"
        )
    return data


def read_result(path: str | os.PathLike) -> dict:
    """Read and validate a result file."""
    return validate_result(read_json(path), path)


def result_from_dict(data: dict) -> EvaluationResult:
    """A validated result (:func:`validate_result`) as dataclasses."""
    return EvaluationResult(data["summary"], [CaseResult(**case) for case in data["cases"]])
