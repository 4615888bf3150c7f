"""Model selection as released: the best epoch per benchmark on its validation split.

The released AMC models were chosen by evaluating the checkpoint of every epoch on each
benchmark's validation split and keeping the best one per benchmark. ``amc train`` does the
same when its run configuration has a ``selection`` section::

    selection:
      splits:
        - {name: flickr30k, records: data/records/flickr30k-val.jsonl, image_res: 256}
        - {name: refcoco+, records: data/records/refcoco+-val.jsonl, image_res: 384}

At the end of every epoch (and after the last step, so a run shorter than an epoch still has
one) the online model is evaluated on each split with the evaluation protocol of
``amc evaluate``; ``selection.jsonl`` gets one row per (step, split), and
``selection/best_<name>.pt`` is rewritten whenever a split's accuracy improves (ties keep the
earlier epoch). When the run ends they are published as ``checkpoint_best_<name>.pt`` next to
``checkpoint_final.pt``: a workflow that declares those names as outputs (and deletes them
before rerunning an interrupted job) never touches the copies a resumed run relies on. Only the
main process evaluates; the others wait at the trainer's barrier.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from amc.io import AmcError, DataError, append_jsonl, atomic_write_text, read_append_log

log = logging.getLogger(__name__)

SELECTION_LOG = "selection.jsonl"  # one row per (step, split), in the run folder
SELECTION_DIR = "selection"  # best_<name>.pt so far, in the run folder


@dataclass
class SelectionSplit:
    name: str  # the benchmark: names checkpoint_best_<name>.pt and decides the word limit
    records: str
    image_res: int | None = None  # default: the training resolution
    max_words: int | None = None  # default: the benchmark's (amc.evaluate.MAX_WORDS)
    resize: str | None = None  # default: the benchmark's (amc.evaluate.EVAL_RESIZE)


def parse_selection(section: dict | None, source: str = "run configuration") -> list[SelectionSplit]:
    """The ``selection`` section of a run configuration -> its splits ([] when off)."""
    from amc.evaluate import resize_for

    if not section:
        return []
    if (
        not isinstance(section, dict)
        or set(section) - {"splits"}
        or not isinstance(section.get("splits"), list)
    ):
        raise AmcError(
            f"{source}: selection must be {{splits: [{{name, records, image_res, max_words, resize}}, ...]}}"
        )
    splits = []
    for number, entry in enumerate(section["splits"], start=1):
        if not isinstance(entry, dict):
            raise AmcError(f"{source}: selection.splits entry {number} is not a mapping")
        unknown = set(entry) - {"name", "records", "image_res", "max_words", "resize"}
        if unknown or "name" not in entry or "records" not in entry:
            raise AmcError(
                f"{source}: selection.splits entry {number} needs name and records "
                f"(optional image_res, max_words, resize); unknown: {sorted(unknown)}"
            )
        try:
            resize_for(entry["name"], entry.get("resize"))
        except AmcError as error:
            raise AmcError(f"{source}: selection.splits entry {number}: {error}") from None
        splits.append(SelectionSplit(**entry))
    names = [s.name for s in splits]
    if len(set(names)) != len(names):
        raise AmcError(f"{source}: selection.splits names repeat: {names}")
    return splits


def best_checkpoint_name(name: str) -> str:
    return f"checkpoint_best_{name}.pt"


class BestCheckpoints:
    """Evaluates the model on the selection splits and keeps the best checkpoint of each."""

    def __init__(self, out_dir: Path, splits: list[SelectionSplit], tokenizer, device, num_workers: int):
        from amc.evaluate import check_images
        from amc.records import load_records

        self.out_dir, self.splits, self.tokenizer = Path(out_dir), splits, tokenizer
        self.device, self.num_workers = device, num_workers
        self.log_path = self.out_dir / SELECTION_LOG
        self.work_dir = self.out_dir / SELECTION_DIR
        self.records = {}
        for split in splits:  # read and check every file before the first step
            records, _ = check_images(load_records(split.records), skip_missing=False)
            self.records[split.name] = records
        self.best: dict[str, float] = {}

    def restore(self, resumed_step: int) -> None:
        """Forget rows written after the checkpoint a run resumes from; the best so far from the rest.

        A split whose best checkpoint is missing starts over (its next evaluation writes one).
        """
        rows = self.rows()
        kept = [row for row in rows if row["step"] <= resumed_step]
        if len(kept) != len(rows):
            atomic_write_text(self.log_path, "".join(json.dumps(row) + "\n" for row in kept))
        self.best = {}
        for row in kept:
            if self.work_path(row["split"]).exists():
                self.best[row["split"]] = max(self.best.get(row["split"], float("-inf")), row["accuracy"])

    def work_path(self, name: str) -> Path:
        return self.work_dir / f"best_{name}.pt"

    def publish(self) -> list[Path]:
        """Link every best checkpoint to ``checkpoint_best_<name>.pt`` (atomically; at the end of a run)."""
        published = []
        for split in self.splits:
            source, target = self.work_path(split.name), self.out_dir / best_checkpoint_name(split.name)
            if not source.exists():
                raise AmcError(f"{source}: no best checkpoint of {split.name} was written")
            temporary = target.with_name(target.name + ".tmp")
            temporary.unlink(missing_ok=True)
            try:
                os.link(source, temporary)
            except OSError:  # a file system without hard links
                shutil.copyfile(source, temporary)
            os.replace(temporary, target)
            published.append(target)
        return published

    def rows(self) -> list[dict]:
        return read_append_log(self.log_path)

    def evaluate(self, model, *, epoch: int, step: int, save) -> dict[str, float]:
        """Evaluate ``model`` on every split; ``save(path)`` writes the checkpoint when one improves.

        The evaluation runs on an eval-mode copy (one per resolution in turn), so the training
        model, its mode and its position embeddings are untouched.
        """
        from amc.evaluate import EvalInputs, evaluate

        results = {}
        candidate = None
        for split in self.splits:
            image_res = split.image_res or model.config.image_res
            if candidate is None or candidate.config.image_res != image_res:
                candidate = copy.deepcopy(model).eval()
                if image_res != candidate.config.image_res:
                    candidate.resize_image_res(image_res)
            cases, _ = evaluate(
                candidate,
                self.tokenizer,
                self.records[split.name],
                inputs=EvalInputs.for_benchmark(
                    split.name, image_res, resize=split.resize, max_words=split.max_words
                ),
                device=self.device,
                num_workers=self.num_workers,
            )
            if not cases:
                raise DataError(
                    f"{split.records}: no case of selection split {split.name} could be evaluated"
                )
            accuracy = sum(c.hit for c in cases) / len(cases)
            improved = accuracy > self.best.get(split.name, float("-inf"))
            if improved:
                self.best[split.name] = accuracy
                self.work_dir.mkdir(parents=True, exist_ok=True)
                save(self.work_path(split.name))
            row = {"epoch": epoch, "step": step, "split": split.name, "accuracy": accuracy, "best": improved}
            append_jsonl(self.log_path, row)
            log.info(
                "selection %s at step %d: %.2f%%%s",
                split.name,
                step,
                100 * accuracy,
                " (best)" if improved else "",
            )
            results[split.name] = accuracy
        del candidate
        if self.device.type == "cuda":  # pragma: no mutate block (device)
            import torch

            torch.cuda.empty_cache()
        return results
