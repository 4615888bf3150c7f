"""``amc train`` and ``amc pretrain``: one training loop for fine-tuning and for the demo's pretraining.

Read top to bottom: the data, the model and its objectives, the optimiser and
schedule, then the loop. The run configuration they read (defaults, file,
``key=value`` overrides, checked once, typed) is :mod:`amc.run_config`.
Pretraining is the same loop from random weights on captions with the ALBEF
objectives only.

Faithful to the released code (AMC-grounding ``Pretrain.py``) by default: AdamW with
weight decay off for 1-D parameters and biases, the released learning-rate schedule (a
warm-up staircase over epoch 0, then a cosine stepped once per epoch; ``optim.schedule``),
fp32 with TF32 matmuls on CUDA (``precision``), alpha ramped linearly over the optimiser
steps of the first epoch. One optimiser step of ``optim.grad_accum`` micro-batches on each
of N processes does what the release does on ``grad_accum * N`` GPUs: one momentum update
at its start, every micro-batch against the same queues, the step's momentum features
(gathered in virtual-rank order) enqueued once at its end; hard negatives and L_mean stay
within each micro-batch. One process without ``torch.distributed`` works.

Resuming is exact: the learning rate and alpha are functions of the optimiser step, the
data order a function of (seed, epoch), each sample's augmentation of (seed, epoch, index),
and the random state of every micro-batch (dropout, hard negatives, MLM masking) of (seed,
optimiser step, virtual rank), so a run killed and resumed from its last checkpoint ends
with the same weights.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import resource
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import yaml
from torch import nn

from amc.data.datasets import CaptionDataset, PhraseBoxDataset, load_captions
from amc.data.transforms import build_train_transform
from amc.grid import FINAL_CHECKPOINT, TRAIN_METRICS
from amc.io import (
    AmcError,
    append_jsonl,
    atomic_write_text,
    check_outputs,
    read_append_log,
    read_yaml,
)
from amc.models.albef import ALBEF
from amc.models.checkpoint import load_model, read_checkpoint, save_checkpoint
from amc.models.config import ModelConfig
from amc.models.tokenizer import load_tokenizer, pre_caption
from amc.objectives import StepContext, TrainBatch, build_objectives
from amc.records import load_records
from amc.run_config import DataConfig, OptimConfig, RunConfig, load_run_config
from amc.selection import SELECTION_DIR, SELECTION_LOG, BestCheckpoints, best_checkpoint_name
from amc.tensorboard_log import TensorBoardLog

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------- processes and devices


@dataclass
class Processes:
    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_processes() -> Processes:
    """torch.distributed when launched by torchrun (WORLD_SIZE set), else one plain process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size > 1:
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))  # pragma: no mutate (device)
        if torch.cuda.is_available():  # pragma: no mutate block (device)
            torch.cuda.set_device(local_rank)
            device, backend = torch.device("cuda", local_rank), "nccl"
        else:
            device, backend = torch.device("cpu"), "gloo"
        if not dist.is_initialized():
            dist.init_process_group(backend)
        return Processes(dist.get_rank(), dist.get_world_size(), device)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return Processes(0, 1, device)


def step_seed(seed: int, step: int, virtual_rank: int) -> int:
    """The random state of one micro-batch: optimiser step ``step`` (0-based), virtual rank
    ``rank * grad_accum + micro`` (so k micro-batches on one process draw what k processes would)."""
    return (seed * 1_000_003 + step * 1_009 + virtual_rank * 7_919) % (2**63 - 1)


# --------------------------------------------------------------------------- data


class EpochSampler(torch.utils.data.Sampler):
    """A permutation that depends only on (seed, epoch), cut into global batches, resumable mid-epoch.

    Optimiser step t of an epoch takes the global batch ``order[t*G : (t+1)*G]``, G = batch_size
    * world_size * grad_accum, cut into micro-batches of batch_size in virtual-rank order (virtual
    rank = rank * grad_accum + micro): process ``rank`` reads micro-batches rank*k .. rank*k+k-1
    of every global batch. So k micro-batches on one process see what k processes would. The
    last partial global batch of an epoch is dropped.
    """

    def __init__(
        self, size: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1, grad_accum: int = 1
    ):
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.rank, self.world_size, self.grad_accum = rank, world_size, grad_accum
        self.steps_per_epoch = size // (batch_size * world_size * grad_accum)
        if self.steps_per_epoch == 0:
            raise AmcError(
                f"{size} training samples are fewer than one global batch ({batch_size} x "
                f"{world_size} processes x grad_accum {grad_accum}); lower optim.batch_size"
            )
        self.batches_per_epoch = self.steps_per_epoch * grad_accum  # this process's micro-batches
        self.epoch, self.start_batch = 0, 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(self.size, generator=generator)
        per_step = self.grad_accum * self.batch_size  # one process's share of a global batch
        steps = order[: self.steps_per_epoch * self.world_size * per_step].view(
            self.steps_per_epoch, self.world_size, per_step
        )
        mine = steps[:, self.rank].reshape(-1)
        return iter(mine[self.start_batch * self.batch_size :].tolist())

    def __len__(self) -> int:
        return (self.batches_per_epoch - self.start_batch) * self.batch_size


def build_dataset(config: RunConfig):
    data = config.data
    augment = data.augment
    transform = build_train_transform(
        augment.pipeline,
        image_res=data.image_res,
        mask_size=data.mask_size,
        hflip_p=augment.hflip,
        grayscale_p=augment.grayscale,
        color_jitter=tuple(augment.color_jitter),
        color_jitter_p=augment.color_jitter_p,
        swap_left_right=augment.swap_left_right,
    )
    if data.kind == "records":
        return PhraseBoxDataset(load_records(data.path), transform, seed=config.seed)
    path = Path(data.path)
    return CaptionDataset(load_captions(path), root=path.parent, transform=transform, seed=config.seed)


def collate(samples: list[dict]) -> dict:
    batch = {"image": torch.stack([s["image"] for s in samples]), "text": [s["text"] for s in samples]}
    # images that could not be read and were replaced (amc.data.datasets), counted into metrics.jsonl
    batch["images_replaced"] = sum(s.get("replaced", 0) for s in samples)
    if "mask" in samples[0]:
        batch["box_mask"] = torch.stack([s["mask"] for s in samples])
    return batch


# --------------------------------------------------------------------------- optimiser and schedule


def weight_decay_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """The released ``add_weight_decay``: no decay for 1-D parameters (LayerNorm weights, biases)
    and names ending in ``.bias``; everything else is decayed, the 0-dim ``temp`` and the ViT's
    ``pos_embed`` and ``cls_token`` included (the release builds the optimiser on the ALBEF
    wrapper, which has no ``no_weight_decay()``). Groups in the released order: no decay, decay."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue  # the momentum copies
        (no_decay if param.ndim == 1 or name.endswith(".bias") else decay).append(param)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]


def build_optimizer(model: nn.Module, optim: OptimConfig, device: torch.device) -> torch.optim.Optimizer:
    """AdamW with torch's default betas (0.9, 0.999) and eps 1e-8, no gradient clipping, as released
    (fused on CUDA: the same update, another kernel)."""
    groups = weight_decay_groups(model, optim.weight_decay)
    return torch.optim.AdamW(groups, lr=optim.lr, fused=device.type == "cuda")  # pragma: no mutate (device)


def lr_at(step: int, steps_per_epoch: int, total_steps: int, optim: OptimConfig) -> float:
    """The learning rate of optimiser step ``step`` (0-based; one step = one global batch).

    A pure function of the step, so a resumed run continues on the same curve.
    ``optim.schedule: released`` is :func:`released_lr`; ``cosine`` is :func:`per_step_cosine_lr`.
    """
    if optim.schedule == "cosine":
        return per_step_cosine_lr(step, total_steps, optim)
    return released_lr(step, steps_per_epoch, optim)


def released_lr(step: int, steps_per_epoch: int, optim: OptimConfig) -> float:
    """The released schedule: timm's CosineLRScheduler as ``Pretrain.py`` drives it.

    Epoch 0 is a warm-up staircase. The scheduler starts at ``warmup_lr`` and is stepped to stair
    ``i // stair_steps`` right AFTER optimiser step i whenever i is a multiple of ``stair_steps``
    and i <= warmup_stairs * stair_steps; so step s (0-based) uses stair
    k = min(max(s - 1, 0) // stair_steps, warmup_stairs): stair 0 for s <= 100, stair 1 for
    s = 101..200, ..., stair 20 from s = 2001 (released values). Stair k < warmup_stairs has
    lr = warmup_lr + k * (lr - warmup_lr) / warmup_stairs; stair warmup_stairs is lr, kept to the
    end of epoch 0 (an epoch with fewer steps ends mid-staircase).
    Epoch e >= 1: the cosine over the epochs, stepped once at the start of the epoch,
    min_lr + (lr - min_lr) * (1 + cos(pi * e / epochs)) / 2; the warm-up is a prefix, not part
    of the cosine.
    """
    epoch, in_epoch = divmod(step, steps_per_epoch)
    lr, min_lr, stairs = optim.lr, optim.min_lr, optim.warmup_stairs
    if epoch == 0:
        stair = min(max(in_epoch - 1, 0) // optim.stair_steps, stairs)
        if stair < stairs:
            return optim.warmup_lr + stair * (lr - optim.warmup_lr) / stairs
        return lr
    if epoch >= optim.epochs:  # past the single cycle (the released cycle_limit 1)
        return min_lr
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * epoch / optim.epochs))


def per_step_cosine_lr(step: int, total_steps: int, optim: OptimConfig) -> float:
    """``optim.schedule: cosine``: linear warm-up over ``warmup_steps`` steps to lr, then a cosine to
    min_lr at the last step, every optimiser step (for runs shorter than an epoch: the demo)."""
    lr, min_lr, warmup = optim.lr, optim.min_lr, optim.warmup_steps
    if warmup and step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total_steps - warmup)
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * min(1.0, progress)))


def alpha_at(step: int, steps_per_epoch: int, alpha: float) -> float:
    """The distillation weight of optimiser step ``step`` (0-based): as released, ramped linearly
    over the steps of epoch 0 (``alpha * i / len(data_loader)``, i the step), then constant; the
    same for every micro-batch of a step."""
    return alpha * min(1.0, step / steps_per_epoch)


def numerics(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """Set a run's float32 matmul mode and return the context its forward passes run in.

    ``tf32`` (default, as released): fp32 weights and activations; on CUDA, matmuls and
    convolutions in TF32, as under the release's PyTorch 1.8, where both were on by default.
    ``fp32``: strict IEEE fp32 everywhere. ``bf16``: autocast to bfloat16 on CUDA (faster; its
    equivalence to the release has not been measured). On the CPU all three are plain fp32.
    """
    if device.type != "cuda":
        return contextlib.nullcontext()
    torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
    torch.backends.cudnn.allow_tf32 = precision == "tf32"
    if precision == "bf16":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


# --------------------------------------------------------------------------- the step


@dataclass
class QueueFeatures:
    """Momentum features of one micro-batch, bound for the ITC queues."""

    image_feat: torch.Tensor  # [B, E]
    text_feat: torch.Tensor  # [B, E]


@dataclass
class MicroBatchOutput:
    loss: torch.Tensor  # the weighted sum of the objectives
    logs: dict[str, float]
    queue_features: QueueFeatures | None  # None when no objective ran the momentum encoders


class TrainingStep(nn.Module):
    """The model and its objectives as one module, so DistributedDataParallel can wrap it.

    One optimiser step over k micro-batches, as the release does it over k GPUs:
    :meth:`begin_step` (the momentum update, once), :meth:`forward` for each micro-batch (the
    objectives; they read the queues, nothing writes them), :meth:`end_step` (the step's momentum
    features into the queues, once, gathered across processes).
    """

    def __init__(self, model: nn.Module, objectives: list, special_ids: dict[str, int]):
        super().__init__()
        self.model = model
        self.objectives = objectives
        self.special_ids = special_ids
        self.needs_gradcam = any(o.needs_gradcam for o in objectives)

    def begin_step(self) -> None:
        self.model.momentum_update()

    def forward(self, batch, alpha: float, generator: torch.Generator) -> MicroBatchOutput:
        ctx = StepContext(self.model, batch, alpha, generator, self.needs_gradcam, self.special_ids)
        total, logs = 0.0, {}
        for objective in self.objectives:
            out = objective(ctx)
            total = total + out.loss
            logs.update(out.logs)
        queued = QueueFeatures(ctx.momentum.image_feat, ctx.momentum.text_feat) if ctx.momentum_used else None
        return MicroBatchOutput(total, logs, queued)

    def end_step(self, outputs: list[MicroBatchOutput]) -> None:
        """Enqueue the step's momentum features in micro-batch order; the model all-gathers them in
        rank order, so the queue receives them in virtual-rank order (rank * k + micro)."""
        features = [out.queue_features for out in outputs if out.queue_features is not None]
        if features:
            self.model.dequeue_and_enqueue(
                torch.cat([f.image_feat for f in features]), torch.cat([f.text_feat for f in features])
            )


def to_train_batch(raw: dict, tokenizer, data: DataConfig, device: torch.device):
    texts = [pre_caption(t, data.max_words) for t in raw["text"]]
    tokens = tokenizer(texts, max_length=data.max_tokens)
    box_mask = raw.get("box_mask")
    if box_mask is not None:
        box_mask = box_mask.to(device, non_blocking=True)  # pragma: no mutate (device)
    return TrainBatch(
        image=raw["image"].to(device, non_blocking=True),  # pragma: no mutate (device)
        input_ids=tokens.input_ids.to(device),  # pragma: no mutate (device)
        attention_mask=tokens.attention_mask.to(device),  # pragma: no mutate (device)
        box_mask=box_mask,
    )


# --------------------------------------------------------------------------- checkpoints and metrics


def _images_replaced(raw: dict, procs: Processes) -> int:
    """Images replaced in this micro-batch, summed over processes."""
    count = int(raw.get("images_replaced", 0))
    if procs.world_size > 1:  # pragma: no mutate block (processes)
        total = torch.tensor(count, device=procs.device)
        dist.all_reduce(total)
        count = int(total.item())
    return count


def _memory_mb(device: torch.device) -> float:
    if device.type == "cuda":  # pragma: no mutate block (device)
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _trim_metrics(path: Path, last_step: int) -> None:
    """On resume, drop metric lines logged after the checkpoint we resume from (and a torn last line)."""
    if not path.exists():
        return
    kept = [row for row in read_append_log(path) if _logged_step(row, path) <= last_step]
    atomic_write_text(path, "".join(json.dumps(row) + "\n" for row in kept))


def _logged_step(row: dict, path: Path) -> int:
    step = row.get("step")
    if isinstance(step, bool) or not isinstance(step, int):
        raise AmcError(f"{path}: a row without a whole-number 'step': {row!r}")
    return step


def _mean_logs(outputs: list[MicroBatchOutput]) -> dict[str, float]:
    """The step's loss and logged terms: means over its micro-batches."""
    logs = {"loss": sum(float(out.loss.item()) for out in outputs) / len(outputs)}
    for key in outputs[0].logs:
        logs[key] = sum(out.logs[key] for out in outputs) / len(outputs)
    return logs


class RunFolder:
    """The files of one run in its ``--out`` folder, and the rule that keeps them consistent.

    The folder is either complete and consistent or visibly incomplete:

    * ``config.resolved.yaml`` says which run the folder holds; it is written when a run starts
      afresh, after every input was checked and after everything an older run left was removed
      (its final checkpoint first);
    * ``checkpoint_last.pt``, the metrics, ``selection.jsonl``, ``selection/`` and the best
      checkpoints are progress; a run resumes from them only when ``config.resolved.yaml`` (and
      the last checkpoint's own copy of the configuration) equal the configuration asked for;
    * ``checkpoint_final.pt`` is written last, atomically: present beside a matching
      ``config.resolved.yaml``, it means the run completed.
    """

    def __init__(self, out_dir: Path, metrics_path: Path | None = None):
        self.out_dir = out_dir
        self.config_path = out_dir / "config.resolved.yaml"
        self.last = out_dir / "checkpoint_last.pt"
        self.final = out_dir / FINAL_CHECKPOINT
        self.metrics = metrics_path or out_dir / TRAIN_METRICS

    def outputs(self) -> dict[str, Path]:
        """The files a run writes (for :func:`amc.io.check_outputs`)."""
        return {
            "--out (config.resolved.yaml)": self.config_path,
            "--out (checkpoint_last.pt)": self.last,
            "--out (checkpoint_final.pt)": self.final,
            "--metrics": self.metrics,
        }

    def progress_files(self) -> list[Path]:
        """Everything a run leaves, the completion mark first (what a fresh start removes)."""
        best = sorted(self.out_dir.glob(best_checkpoint_name("*")))
        return [self.final, self.last, *best, self.out_dir / SELECTION_LOG, self.metrics, self.config_path]

    def recorded_config(self) -> dict | None:
        """The configuration of the run the folder holds (None: none, or unreadable)."""
        if not self.config_path.exists():
            return None
        try:
            recorded = read_yaml(self.config_path)
        except AmcError as error:
            log.warning("%s", error)
            return None
        return recorded if isinstance(recorded, dict) else None

    def start_afresh(self) -> None:
        """Remove what an older run left (the final checkpoint first), then record ``config``."""
        for path in self.progress_files():
            path.unlink(missing_ok=True)
        shutil.rmtree(self.out_dir / SELECTION_DIR, ignore_errors=True)

    def write_config(self, config: RunConfig) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.config_path, yaml.safe_dump(config.to_dict(), sort_keys=False))


@dataclass
class TrainResult:
    steps: int


@dataclass
class Run:
    """One training run: what :func:`_build` makes, and where the run stands (the step counters)."""

    config: RunConfig
    folder: RunFolder
    procs: Processes
    model: nn.Module
    tokenizer: Any
    training_step: TrainingStep
    step_module: nn.Module  # runs the micro-batches' forward: the training step, DDP-wrapped if several
    dataset: Any
    sampler: EpochSampler
    loader: torch.utils.data.DataLoader
    optimizer: torch.optim.Optimizer
    selection_splits: list
    selector: BestCheckpoints | None  # on the main process only
    total_steps: int
    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    images_replaced: int = 0

    def barrier(self) -> None:
        if self.procs.world_size > 1:
            dist.barrier()

    def save(self, path: Path, **fields) -> None:
        """A checkpoint of the model with ``fields``, the run configuration and the vocabulary (with the
        model config the checkpoint carries, amc evaluate/gradcam need no other file)."""
        save_checkpoint(
            path, self.model, **fields, run_config=self.config.to_dict(), vocab=self.tokenizer.ids_to_tokens
        )

    def save_last(self, next_epoch: int, next_batch: int) -> None:
        """``checkpoint_last.pt``: everything a resumed run needs to go on from (next_epoch, next_batch)."""
        if self.procs.is_main:
            self.save(
                self.folder.last,
                optimizer=self.optimizer.state_dict(),
                step=self.step,
                epoch=next_epoch,
                batch_in_epoch=next_batch,
                images_replaced=self.images_replaced,
            )
        self.barrier()

    def select_best(self, finished_epoch: int, at_step: int) -> None:
        """Evaluate on the selection splits; a split's best checkpoint is rewritten when it improves."""
        if self.selector is not None:
            self.selector.evaluate(
                self.model,
                epoch=finished_epoch,
                step=at_step,
                save=lambda path: self.save(
                    path, step=at_step, epoch=finished_epoch, method=self.config.method.name
                ),
            )
        self.barrier()


# --------------------------------------------------------------------------- the loop


def train(
    config: RunConfig, out_dir: str | os.PathLike, *, resume: bool = False, metrics_path: str | None = None
) -> TrainResult:
    out_dir = Path(out_dir)
    folder = RunFolder(out_dir, Path(metrics_path) if metrics_path else None)
    # Where the run writes, first: no input is one of its outputs, every output can be created.
    check_outputs(
        folder.outputs(),
        {
            "init_checkpoint": config.init_checkpoint,
            "data.path": config.data.path,
            "model_config": config.model_config,
            "vocab": config.vocab,
            **{f"selection.splits[{s.name}]": s.records for s in config.selection.splits},
        },
        folders={"--out": out_dir},
    )
    procs = setup_processes()
    resume = _may_resume(folder, config, resume)
    if resume and folder.final.exists():
        log.info("%s exists: the run is complete, nothing to resume", folder.final)
        return TrainResult(0)
    torch.manual_seed(config.seed)
    run = _build(config, folder, procs)
    _resume(run, resume)
    _loop(run)
    _finish(run)
    return TrainResult(run.step)


def _may_resume(folder: RunFolder, config: RunConfig, resume: bool) -> bool:
    """Whether the folder holds this run: nothing is written until every input has been read and checked."""
    recorded = folder.recorded_config() if resume else None
    if resume and recorded is not None and not config.matches(recorded):
        # The workflow reruns a job whose configuration changed: the old files belong to another run.
        log.warning("%s: the configuration changed since the last run; starting afresh", folder.config_path)
        return False
    if resume and recorded is None and (folder.final.exists() or folder.last.exists()):
        log.warning(
            "%s: missing or unreadable, so the checkpoints beside it cannot be trusted; starting afresh",
            folder.config_path,
        )
        return False
    return resume


def _build(config: RunConfig, folder: RunFolder, procs: Processes) -> Run:
    """The model, tokenizer and objectives, the data, the selection and the optimiser of a run."""
    seed, optim = config.seed, config.optim

    # Model, tokenizer and objectives.
    model_config = ModelConfig.from_file(config.model_config)
    model_config.image_res = config.data.image_res
    tokenizer = load_tokenizer(config.vocab)
    if tokenizer.vocab_size != model_config.text.vocab_size:
        raise AmcError(
            f"{config.vocab}: the vocabulary has {tokenizer.vocab_size} tokens but "
            f"{config.model_config} declares vocab_size {model_config.text.vocab_size}"
        )
    if config.init_checkpoint:
        model = load_model(config.init_checkpoint, model_config, purpose="train")
    else:
        model = ALBEF(model_config)
        model.copy_params()
    model.to(procs.device).train()  # pragma: no mutate (device)
    objectives = build_objectives(config.method.objectives)
    for objective in objectives:
        objective.setup(model)
    if any(o.needs_boxes for o in objectives) and config.data.kind != "records":
        raise AmcError(f"method {config.method.name!r} needs boxes: set data.kind to 'records'")
    special_ids = {
        "pad": tokenizer.pad_token_id,
        "cls": tokenizer.cls_token_id,
        "mask": tokenizer.mask_token_id,
    }
    training_step = TrainingStep(model, objectives, special_ids)
    step_module: nn.Module = training_step
    if procs.world_size > 1:  # pragma: no mutate block (processes)
        step_module = nn.parallel.DistributedDataParallel(
            training_step,
            device_ids=[procs.device.index] if procs.device.type == "cuda" else None,
            find_unused_parameters=True,  # objectives switched off leave heads unused
            broadcast_buffers=False,  # queues are filled from gathered features: identical on every rank
        )

    # Data.
    dataset = build_dataset(config)
    sampler = EpochSampler(
        len(dataset), optim.batch_size, seed, procs.rank, procs.world_size, optim.grad_accum
    )
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=optim.batch_size,
        sampler=sampler,
        num_workers=config.num_workers,
        collate_fn=collate,
        pin_memory=procs.device.type == "cuda",  # pragma: no mutate (device)
        drop_last=True,
        persistent_workers=False,
    )
    total_steps = optim.epochs * sampler.steps_per_epoch
    if optim.max_steps:
        total_steps = min(total_steps, optim.max_steps)

    selection_splits = config.selection.splits
    selector = None
    if selection_splits and procs.is_main:
        selector = BestCheckpoints(
            folder.out_dir, selection_splits, tokenizer, procs.device, config.num_workers
        )

    optimizer = build_optimizer(model, optim, procs.device)
    return Run(
        config=config,
        folder=folder,
        procs=procs,
        model=model,
        tokenizer=tokenizer,
        training_step=training_step,
        step_module=step_module,
        dataset=dataset,
        sampler=sampler,
        loader=loader,
        optimizer=optimizer,
        selection_splits=selection_splits,
        selector=selector,
        total_steps=total_steps,
    )


def _resume(run: Run, resume: bool) -> None:
    """Go on from the newest checkpoint of this run when there is one, else start the folder afresh."""
    folder, config, procs = run.folder, run.config, run.procs
    saved = read_checkpoint(folder.last) if resume and folder.last.exists() else None
    if saved is not None and not config.matches(saved.extra.get("run_config")):
        log.warning("%s: saved by another configuration; starting afresh", folder.last)
        saved = None
    if saved is not None:
        run.model.load_state_dict(saved.state_dict)  # our own file: the model's exact keys
        state = saved.extra
        run.optimizer.load_state_dict(state["optimizer"])  # the lr and alpha are functions of the step
        run.step, run.epoch, run.batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
        run.images_replaced = state.get("images_replaced", 0)
        log.info(
            "resumed from %s at step %d (epoch %d, batch %d)",
            folder.last,
            run.step,
            run.epoch,
            run.batch_in_epoch,
        )
    run.barrier()  # every process has read the folder before the main one changes it
    if procs.is_main:
        if saved is not None:
            _trim_metrics(folder.metrics, run.step)
        else:
            folder.start_afresh()
            folder.write_config(config)
        folder.metrics.parent.mkdir(parents=True, exist_ok=True)  # --metrics may name a folder of its own
    if run.selector is not None:
        run.selector.restore(run.step)


def _loop(run: Run) -> None:
    """The optimiser steps from ``run.step`` to ``run.total_steps``: a checkpoint per epoch, selection
    at each epoch's end, the metrics every ``log_every`` steps."""
    config, optim, procs = run.config, run.config.optim, run.procs
    seed, accum, total_steps = config.seed, optim.grad_accum, run.total_steps
    steps_per_epoch = run.sampler.steps_per_epoch
    # TensorBoard event files beside metrics.jsonl when tensorboard is installed (amc.tensorboard_log)
    board = TensorBoardLog(run.folder.metrics.parent, resume_step=run.step or None) if procs.is_main else None
    autocast = numerics(config.precision, procs.device)  # pragma: no mutate (device)
    progress = _progress_bar(procs.is_main, total_steps, run.step, config.method.name)
    window_start, window_pairs = time.perf_counter(), 0
    global_batch = optim.batch_size * accum * procs.world_size

    while run.step < total_steps:
        run.sampler.set_epoch(run.epoch, run.batch_in_epoch)
        run.dataset.set_epoch(run.epoch)
        micro = 0
        for micro, raw in enumerate(run.loader, start=run.batch_in_epoch):
            position = micro % accum  # of this micro-batch within the optimiser step
            if position == 0:  # a new optimiser step
                run.training_step.begin_step()  # the momentum update, once per step
                outputs: list[MicroBatchOutput] = []
                lr = lr_at(run.step, steps_per_epoch, total_steps, optim)
                alpha = alpha_at(run.step, steps_per_epoch, config.alpha)
            virtual_rank = procs.rank * accum + position
            torch.manual_seed(step_seed(seed, run.step, virtual_rank))  # dropout
            generator = torch.Generator().manual_seed(step_seed(seed, run.step, virtual_rank) + 1)
            batch = to_train_batch(raw, run.tokenizer, config.data, procs.device)
            run.images_replaced += _images_replaced(raw, procs)
            last_micro = position == accum - 1
            sync = contextlib.nullcontext()
            if not last_micro and procs.world_size > 1:  # pragma: no mutate block (processes)
                sync = run.step_module.no_sync()  # DDP all-reduces the gradients of the last micro-batch only
            with sync:
                with autocast:
                    out = run.step_module(batch, alpha, generator)
                (out.loss / accum).backward()  # DDP then averages over processes: the global batch's mean
            outputs.append(out)
            if not last_micro:
                continue
            run.training_step.end_step(outputs)  # the step's momentum features into the queues, once
            for group in run.optimizer.param_groups:
                group["lr"] = lr
            run.optimizer.step()
            run.optimizer.zero_grad(set_to_none=True)
            run.step += 1
            window_pairs += global_batch
            if procs.is_main and (
                run.step % config.log_every == 0 or run.step == total_steps or run.step == 1
            ):
                elapsed = time.perf_counter() - window_start
                logs = {
                    "step": run.step,
                    "epoch": run.epoch,
                    "lr": lr,  # the learning rate this step used
                    **_mean_logs(outputs),  # loss and objective terms over this process's micro-batches
                    "alpha": alpha,
                    "pairs_per_s": window_pairs / max(elapsed, 1e-9),
                    "max_memory_mb": _memory_mb(procs.device),
                    "images_replaced": run.images_replaced,
                }
                append_jsonl(run.folder.metrics, logs)
                board.log(run.step, logs)
                progress.set_postfix(loss=f"{logs['loss']:.3f}", pairs_s=f"{logs['pairs_per_s']:.0f}")
                window_start, window_pairs = time.perf_counter(), 0
            progress.update(1)
            save_every = config.save_every_steps
            if save_every and run.step % save_every == 0 and run.step < total_steps:
                run.save_last(run.epoch, micro + 1)
            if run.step >= total_steps:
                break
        finished_epoch = micro + 1 >= run.sampler.batches_per_epoch
        if run.selection_splits and (finished_epoch or run.step >= total_steps):
            run.select_best(run.epoch, run.step)
        run.epoch, run.batch_in_epoch = (run.epoch + 1, 0) if finished_epoch else (run.epoch, micro + 1)
        if run.step < total_steps or finished_epoch:
            run.save_last(run.epoch, run.batch_in_epoch)  # one checkpoint per epoch (and at the very end)

    progress.close()
    if board is not None:
        board.close()


def _finish(run: Run) -> None:
    """Check the replicas, publish the best checkpoints, then write the final one: the run is complete."""
    procs = run.procs
    if procs.world_size > 1:  # pragma: no mutate block (processes)
        _check_replicas_identical(run.model, procs)
    if procs.is_main:
        if run.selector is not None:
            run.selector.publish()  # before the final checkpoint, which marks the run complete
        # the epoch of the last step
        last_epoch = run.epoch - 1 if run.batch_in_epoch == 0 and run.epoch > 0 else run.epoch
        run.save(run.folder.final, step=run.step, epoch=last_epoch, method=run.config.method.name)
        log.info("finished %d steps: %s", run.step, run.folder.final)
    run.barrier()


def _check_replicas_identical(model: nn.Module, procs: Processes) -> None:
    """Every process must hold rank 0's weights bit for bit; anything else is a bug worth stopping for."""
    flat = torch.cat(
        [p.detach().reshape(-1).float() for p in model.state_dict().values() if p.is_floating_point()]
    )
    reference = flat.clone()
    dist.broadcast(reference, src=0)
    identical = int(torch.equal(flat, reference))
    same = torch.tensor([identical], device=flat.device)  # pragma: no mutate (device)
    dist.all_reduce(same, op=dist.ReduceOp.MIN)
    if not bool(same.item()):
        raise AmcError(f"rank {procs.rank}: weights differ between processes after training")
    log.info("weights identical on %d processes", procs.world_size)


def _progress_bar(enabled: bool, total: int, initial: int, name: str):
    from tqdm import tqdm

    return tqdm(
        total=total,
        initial=initial,
        desc=f"train {name}",
        unit="step",
        disable=not enabled,
        mininterval=1.0 if os.isatty(2) else 10.0,
        dynamic_ncols=True,
    )


# --------------------------------------------------------------------------- command line


def configure_parser(parser) -> None:
    parser.add_argument("--config", help="run configuration YAML (docs/architecture.md)")
    parser.add_argument("--out", required=True, help="output folder (checkpoints, config.resolved.yaml)")
    parser.add_argument("--metrics", help="where to write metrics.jsonl (default: OUT/metrics.jsonl)")
    parser.add_argument(
        "--resume", action="store_true", help="continue from OUT/checkpoint_last.pt if present"
    )
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="override a configuration value")


def run(args) -> int:
    config = load_run_config(args.config, args.overrides)
    if args.command == "pretrain":
        if config.init_checkpoint:
            raise AmcError("pretrain starts from random weights: init_checkpoint must be null")
        if any(name not in ("itc", "itm", "mlm") for name in config.method.objectives):
            raise AmcError("pretrain uses the ALBEF objectives only (itc, itm, mlm)")
    train(config, args.out, resume=args.resume, metrics_path=args.metrics)
    return 0
