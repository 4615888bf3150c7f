"""The evaluation result file (``amc evaluate --out RESULT.json``) and its one validator.

``amc evaluate`` writes it; the reports, the notebook and model selection read it back through
:func:`read_result`, which checks every field where it enters: a case's ``hit`` is a JSON
boolean (the string ``"false"`` is not a miss counted as a hit), every number is finite and in
range, and the summary's counts agree with the cases. The format is in docs/architecture.md.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from amc.io import DataError, is_finite_number, read_json

MISS_KINDS = ("other_object", "background")  # amc.metrics.classify_miss


@dataclass
class CaseResult:
    id: str
    point: list[int] | None
    hit: bool
    miss: str | None
    category: str | None = None
    box_hit: bool | None = None


@dataclass
class EvaluationResult:
    summary: dict
    cases: list[CaseResult] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"summary": self.summary, "cases": [vars(c) for c in self.cases]}


def _case(raw: Any, where: str) -> CaseResult:
    if not isinstance(raw, dict):
        raise DataError(f"{where}: expected an object, got {type(raw).__name__}")
    for key in ("id", "hit"):
        if key not in raw:
            raise DataError(f"{where}: missing field {key!r}")
    case_id, hit, miss = raw["id"], raw["hit"], raw.get("miss")
    if not isinstance(case_id, str) or not case_id:
        raise DataError(f"{where}: 'id' must be a non-empty string, got {case_id!r}")
    if not isinstance(hit, bool):
        raise DataError(f"{where}: 'hit' must be true or false, got {hit!r}")
    if miss is not None and miss not in MISS_KINDS:
        raise DataError(f"{where}: 'miss' must be null or one of {', '.join(MISS_KINDS)}, got {miss!r}")
    if hit and miss is not None:
        raise DataError(f"{where}: a hit with miss {miss!r}")
    point = raw.get("point")
    if point is not None and (
        not isinstance(point, list) or len(point) != 2 or not all(is_finite_number(v) for v in point)
    ):
        raise DataError(f"{where}: 'point' must be null or [x, y] (finite numbers), got {point!r}")
    category = raw.get("category")
    if category is not None and not isinstance(category, str):
        raise DataError(f"{where}: 'category' must be null or a string, got {category!r}")
    box_hit = raw.get("box_hit")
    if box_hit is not None and not isinstance(box_hit, bool):
        raise DataError(f"{where}: 'box_hit' must be null, true or false, got {box_hit!r}")
    return CaseResult(case_id, point, hit, miss, category, box_hit)


def _count(summary: dict, key: str, where: str) -> int:
    value = summary.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise DataError(f"{where}: summary.{key} must be a whole number >= 0, got {value!r}")
    return value


def _share(summary: dict, key: str, where: str) -> float:
    value = summary.get(key)
    if not is_finite_number(value) or not 0 <= value <= 1:
        raise DataError(f"{where}: summary.{key} must be a number in [0, 1], got {value!r}")
    return float(value)


def validate_result(data: Any, where: str) -> EvaluationResult:
    """The one validator of an evaluation result; a DataError names ``where`` and the field."""
    if not isinstance(data, dict) or not isinstance(data.get("summary"), dict):
        raise DataError(f"{where}: not an amc evaluate result (needs a 'summary' object and 'cases')")
    if not isinstance(data.get("cases"), list):
        raise DataError(f"{where}: 'cases' must be a list")
    summary = data["summary"]
    cases = [_case(raw, f"{where}: cases[{n}]") for n, raw in enumerate(data["cases"])]
    if not cases:
        raise DataError(f"{where}: no cases (an evaluation of nothing has no accuracy)")
    ids = [case.id for case in cases]
    if len(set(ids)) != len(ids):
        duplicate = next(i for i in ids if ids.count(i) > 1)
        raise DataError(f"{where}: case id {duplicate!r} appears more than once")
    n_cases, n_hits = _count(summary, "n_cases", where), _count(summary, "n_hits", where)
    accuracy = _share(summary, "accuracy", where)
    hits = sum(case.hit for case in cases)
    if n_cases != len(cases) or n_hits != hits:
        raise DataError(
            f"{where}: summary says {n_hits} hits of {n_cases} cases, the cases hold {hits} of {len(cases)}"
        )
    if abs(accuracy - hits / len(cases)) > 1e-9:
        raise DataError(f"{where}: summary.accuracy {accuracy} is not n_hits / n_cases = {hits / len(cases)}")
    if "box_accuracy" in summary:
        _share(summary, "box_accuracy", where)
    skipped = summary.get("skipped", {})
    if not isinstance(skipped, dict) or not all(
        isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in skipped.values()
    ):
        raise DataError(f"{where}: summary.skipped must map reasons to whole numbers >= 0, got {skipped!r}")
    return EvaluationResult(summary, cases)


def read_result(path: str | os.PathLike) -> EvaluationResult:
    """Read and validate a result file written by ``amc evaluate``."""
    return validate_result(read_json(path), str(path))
