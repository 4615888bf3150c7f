"""Datasets: readers of the raw formats (one module each), transforms and torch datasets.

This module holds what the readers share: :class:`Problems`, the rule for bad annotations.

The rule (documented in ``docs/data.md``): a structural problem (a missing or malformed file)
always stops the run with a :class:`~amc.io.DataError`. A bad individual annotation (an empty
phrase, an empty or non-numeric box, a missing or unreadable image file) is skipped with a
counted warning (``on_error="skip"``, the default) or stops the run (``on_error="stop"``). Cases
left out by design (Flickr30k phrases whose entity has no box) are counted as notes, not problems.
``amc prepare`` writes both counts beside the records (:func:`amc.records.prepare_report_path`),
where ``amc evaluate`` reads them.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field

from amc.io import DataError

log = logging.getLogger(__name__)

ON_ERROR = ("skip", "stop")


@dataclass
class Problems:
    """Counts skipped annotations by reason; raises instead when ``on_error == "stop"``."""

    on_error: str = "skip"
    warn_limit: int = 10  # individual warnings per reason; the rest go to the debug log
    skipped: Counter = field(default_factory=Counter)
    notes: Counter = field(default_factory=Counter)

    def __post_init__(self) -> None:
        if self.on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {ON_ERROR}, not {self.on_error!r}")

    def bad(self, reason: str, message: str) -> None:
        """A bad annotation: ``reason`` is the short category, ``message`` names file and entry."""
        if self.on_error == "stop":
            raise DataError(message)
        self.skipped[reason] += 1
        level = logging.WARNING if self.skipped[reason] <= self.warn_limit else logging.DEBUG
        log.log(level, "skipped (%s): %s", reason, message)

    def note(self, reason: str, count: int = 1) -> None:
        """Something left out by design (not a problem with the data)."""
        self.notes[reason] += count

    def summary(self) -> str:
        def fmt(counter: Counter) -> str:
            return ", ".join(f"{reason}: {n}" for reason, n in sorted(counter.items())) or "none"

        return f"skipped as bad: {fmt(self.skipped)}; left out by design: {fmt(self.notes)}"

    def to_dict(self) -> dict[str, dict[str, int]]:
        return {"skipped": dict(sorted(self.skipped.items())), "left_out": dict(sorted(self.notes.items()))}


def box_problem(box) -> str | None:
    """``None`` for a usable xyxy box, else the reason it is not.

    Usable: four finite numbers with x2 > x1 and y2 > y1. A box reaching outside the image is
    usable: the released evaluation tests points against the boxes as annotated (see
    :func:`outside_image` for the one reader that drops such boxes).
    """
    if not isinstance(box, list | tuple) or len(box) != 4:
        return "malformed box"
    if not all(map(_finite, box)):
        return "non-numeric box"
    x1, y1, x2, y2 = box
    if x2 <= x1 or y2 <= y1:
        return "degenerate box"
    return None


def outside_image(box: list[float], width: int, height: int, tolerance: float = 1.0) -> bool:
    """Whether a box reaches more than ``tolerance`` pixels outside a ``width`` x ``height`` image."""
    x1, y1, x2, y2 = box
    return x1 < -tolerance or y1 < -tolerance or x2 > width + tolerance or y2 > height + tolerance


def is_id(value) -> bool:
    """An id in a raw annotation file: a whole number or a non-empty string (not a bool, list, ...)."""
    return (isinstance(value, int) and not isinstance(value, bool)) or (
        isinstance(value, str) and value != ""
    )


def is_size(value) -> bool:
    """An image side in pixels: a whole number >= 1."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _finite(value) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and value == value
        and abs(value) != float("inf")
    )
