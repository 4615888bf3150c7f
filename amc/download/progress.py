"""Progress lines: what a person follows in a log file, where no progress bar is drawn."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)

# Without a progress bar (--no-progress, as the workflow runs it: its log is a file), a line with
# the bytes so far, the rate and the time left is logged this often.
PROGRESS_LOG_INTERVAL_S = 30.0


def _format_size(size: int | None) -> str:
    if size is None:
        return "?"
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return str(size)


def _format_duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


class _ProgressLog:
    """Logs ``NAME: 1.2 GiB of 13.0 GiB (9%), 12.3 MiB/s, about 17 min left`` at most once per
    ``interval`` seconds: progress a person can follow in a log file, where no bar is drawn.
    The rate is that of the last interval; without a known total there is no percentage or ETA."""

    def __init__(
        self, desc: str, total: int | None, done: int, interval: float | None = None, clock=time.monotonic
    ) -> None:
        self.desc, self.total, self.done, self.clock = desc, total, done, clock
        self.interval = PROGRESS_LOG_INTERVAL_S if interval is None else interval
        self._mark_time, self._mark_bytes = clock(), done

    def update(self, received: int) -> None:
        """``received`` more bytes arrived; log if the interval has passed."""
        self.report(self.done + received)

    def report(self, done: int) -> None:
        """``done`` bytes so far; log if the interval has passed."""
        self.done = done
        now = self.clock()
        elapsed = now - self._mark_time
        if elapsed < self.interval:
            return
        rate = (done - self._mark_bytes) / elapsed if elapsed > 0 else 0.0
        text = _format_size(done)
        if self.total:
            text += f" of {_format_size(self.total)} ({100 * done / self.total:.0f}%)"
        text += f", {_format_size(int(rate))}/s"
        if self.total and rate > 0:
            text += f", about {_format_duration(max(self.total - done, 0) / rate)} left"
        log.info("%s: %s", self.desc, text)
        self._mark_time, self._mark_bytes = now, done


def _size_of(folder: Path, pattern: str) -> int:
    return sum(path.stat().st_size for path in folder.glob(pattern) if path.is_file())


@contextlib.contextmanager
def _log_growth(folder: Path, pattern: str, meter: _ProgressLog) -> Iterator[None]:
    """While the body runs, report the size of the files ``folder/pattern`` to ``meter`` (a
    download another library writes, gdown's ``.part`` file) from a background thread."""
    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(min(meter.interval, 5.0)):
            meter.report(_size_of(folder, pattern))

    thread = threading.Thread(target=watch, name=f"progress-{meter.desc}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
