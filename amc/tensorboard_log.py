"""TensorBoard event files beside ``metrics.jsonl``, when tensorboard is installed.

``metrics.jsonl`` stays the record that the reports and the notebook read; the event files
are for watching a run live (``tensorboard --logdir results/<run>/train``: one run per
method and seed). tensorboard is optional (``pip install "amc-bench[tensorboard]"``); without
it training logs one line saying so and writes no event file.
"""

from __future__ import annotations

import logging
import numbers
from pathlib import Path

log = logging.getLogger(__name__)

EVENT_FILES = "events.out.tfevents.*"
NOT_SCALARS = ("step", "epoch")  # the x axis, and a counter that is not worth a chart


class TensorBoardLog:
    """Scalars of each logged step into ``log_dir`` (the folder of metrics.jsonl).

    ``resume_step``: the step a resumed run continues from (later events of the interrupted run are
    dropped, as its metrics.jsonl lines are); None starts afresh and removes old event files.
    """

    def __init__(self, log_dir: str | Path, resume_step: int | None = None) -> None:
        self.writer = None
        try:
            from torch.utils.tensorboard import SummaryWriter  # raises ImportError without tensorboard
        except ImportError:
            log.info(
                "tensorboard is not installed: no event files (pip install 'amc-bench[tensorboard]'); "
                "metrics.jsonl is written as always"
            )
            return
        log_dir = Path(log_dir)
        if resume_step is None:
            for old in log_dir.glob(EVENT_FILES):
                old.unlink()
        purge_step = None if resume_step is None else resume_step + 1
        self.writer = SummaryWriter(log_dir=str(log_dir), purge_step=purge_step)

    def log(self, step: int, values: dict) -> None:
        if self.writer is None:
            return
        for name, value in values.items():
            if name not in NOT_SCALARS and isinstance(value, numbers.Real) and not isinstance(value, bool):
                self.writer.add_scalar(name, value, step)
        self.writer.flush()  # a person watching the run sees each step

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
