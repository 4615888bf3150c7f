"""``amc bench``: the suite's fast path against the released code's path, side by side in one run.

Everything runs on random weights and random data of the requested shape (no dataset, no
checkpoint), so a run measures the model and the engine, not the disk. For each *path*:

* the **training step** of AMC (itc + itm + mlm + amc) and of plain ALBEF (itc + itm + mlm):
  image-text pairs per second, peak memory, FLOPs of one step and the achieved TFLOP/s (and
  the model FLOPs utilisation against ``--peak-tflops``);
* the **evaluation** loop that makes one GradCAM map per case: cases per second, peak memory,
  FLOPs per case.

The paths:

``reference`` mirrors the released AMC code (AMC-grounding, on ALBEF): fp32 (TF32 off unless
``--tf32``), explicit-softmax attention everywhere (``set_attention("reference")``), a plain
per-parameter AdamW, the momentum update as a Python loop over the parameters, and an
evaluation that runs the whole model on every image-text pair (the image encoded again for
each phrase) with a full ``loss.backward()`` at the released batch of 8, like the released
``grounding_eval``. ``reference-tf32`` is the same with TF32 matmuls (the released code's
188 pairs/s configuration on an H100).

``fast`` is the suite's own engine: bf16 autocast on CUDA (fp32 on CPU), SDPA wherever no
attention probabilities are captured (``set_attention("fast")``), fused AdamW on CUDA
(``amc.train.build_optimizer``), the foreach momentum update, and an evaluation that encodes
each image once under ``no_grad`` for all its phrases and back-propagates through the fusion
layers only (``amc.gradcam.gradcam_eval`` with ``image_index``), at larger batches.
``--compile`` also wraps the encoders in ``torch.compile`` (only where no second-order
gradient passes).

Every run also checks that the paths agree (unless ``--measure`` leaves ``equivalence`` out):
the losses of two training steps from the same weights and batch (dropout off), and the
GradCAM maps of the same cases (Pearson correlation per case, and the pointing point after
bicubic upsampling to a random original size). The results go to a JSON file and a markdown
table; the exit status is 1 when an equivalence check fails.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import gc
import logging
import math
import os
import shlex
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from amc.cli import nonnegative_int, positive_float, positive_int
from amc.io import AmcError, atomic_write_json, atomic_write_text, check_outputs

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parent.parent
DEFAULT_CPU_CONFIG = "config/models/tiny.yaml"
DEFAULT_GPU_CONFIG = "config/models/albef-base.yaml"

PATHS = ("fast", "reference", "reference-tf32")
REFERENCE_PATHS = ("reference", "reference-tf32")
MEASUREMENTS = ("train", "eval", "equivalence")

# The two training steps compared: AMC fine-tuning and the plain ALBEF step it adds to.
OBJECTIVE_SETS: dict[str, dict[str, dict[str, Any]]] = {
    "amc": {"itc": {}, "itm": {}, "mlm": {"probability": 0.15}, "amc": {}},
    "albef": {"itc": {}, "itm": {}, "mlm": {"probability": 0.15}},
}
ALPHA = 0.4  # momentum distillation weight after the first epoch's ramp (released default)
OPTIM = {"lr": 1.0e-5, "weight_decay": 0.02}  # the released fine-tuning values
DEFAULT_PEAK_TFLOPS_CUDA = 790.0  # measured bf16 dense matmul peak of an H100 (issue text)

# Relative tolerance on each training loss, by the fast path's precision.
LOSS_RTOL = {"fp32": 1e-4, "bf16": 2e-2}
LOSS_ATOL = {"fp32": 1e-6, "bf16": 1e-3}  # for terms that are (nearly) zero
MIN_CORRELATION = 0.99
MIN_SAME_POINTS = 0.99


# --------------------------------------------------------------------------- settings and results


@dataclass
class BenchSettings:
    """What to measure; one field per command-line option."""

    model_config: str
    device: str
    batch_size: int = 64
    image_res: int | None = None  # training resolution; None: the model config's
    eval_image_res: int | None = None  # evaluation resolution; None: the training resolution
    text_len: int = 25
    steps: int = 20
    warmup: int = 5
    eval_warmup: int = 2  # evaluation batches run before the clock starts
    eval_cases: int = 256
    eval_batch: int = 64  # fast path: phrases per GradCAM batch
    reference_eval_batch: int = 8  # the released grounding_eval's batch
    phrases_per_image: int = 8
    equivalence_cases: int = 64
    paths: tuple[str, ...] = ("fast", "reference")
    measure: tuple[str, ...] = MEASUREMENTS
    precision: str = "auto"  # the fast path's: auto = bf16 on CUDA, fp32 on CPU
    tf32: bool = False  # TF32 matmuls on the ``reference`` path
    compile: bool = False
    peak_tflops: float | None = None
    seed: int = 0


@dataclass
class PathSpec:
    """How one path runs (see the module docstring)."""

    name: str
    attention: str  # "fast" or "reference" (amc.models.albef.ALBEF.set_attention)
    precision: str  # "bf16" (autocast) or "fp32"
    tf32: bool | None  # TF32 matmuls on CUDA; None leaves torch's defaults
    optimizer: str  # "fused": the engine's (fused on CUDA, torch's default on CPU); "plain": per-parameter
    momentum_update: str  # "foreach" or "loop"
    eval_recipe: str  # "shared-image" (gradcam_eval, fusion-only backward) or "per-pair-full-backward"
    eval_batch: int
    compile: bool = False


@dataclass
class TrainMeasurement:
    path: str
    objectives: str  # "amc" or "albef"
    batch_size: int
    image_res: int
    steps: int
    seconds: float
    pairs_per_s: float
    ms_per_step: float
    peak_memory_mib: float
    memory_kind: str  # "cuda max_memory_allocated" or "rss growth (sampled)"
    tensor_memory_mib: float | None  # CPU: weights, buffers, gradients, optimiser state, saved activations
    flops_per_step: float | None
    achieved_tflops: float | None
    mfu: float | None
    compile_error: str | None = None


@dataclass
class EvalMeasurement:
    path: str
    recipe: str
    batch: int
    image_res: int
    cases: int
    seconds: float
    cases_per_s: float
    peak_memory_mib: float
    memory_kind: str
    tensor_memory_mib: float | None
    flops_per_case: float | None
    achieved_tflops: float | None
    mfu: float | None
    compile_error: str | None = None


@dataclass
class LossComparison:
    step: int  # 1: from the same weights; 2: after one optimiser step and momentum update
    term: str
    fast: float
    reference: float
    abs_diff: float
    rel_diff: float
    passed: bool


@dataclass
class TrainEquivalence:
    precision: str
    rtol: float
    atol: float
    comparisons: list[LossComparison]
    max_rel_diff: float
    passed: bool


@dataclass
class EvalEquivalence:
    cases: int
    image_res: int
    min_correlation: float
    mean_correlation: float
    same_point_fraction: float
    max_abs_diff: float
    passed: bool


@dataclass
class BenchReport:
    meta: dict[str, Any]
    settings: dict[str, Any]
    paths: list[PathSpec]
    train: list[TrainMeasurement] = field(default_factory=list)
    eval: list[EvalMeasurement] = field(default_factory=list)
    amc_overhead: dict[str, float] = field(default_factory=dict)  # path -> AMC step time / ALBEF step time
    speedups: dict[str, dict[str, float]] = field(default_factory=dict)  # reference path -> what -> ratio
    pointing_cases_per_s: float | None = None
    train_equivalence: TrainEquivalence | None = None
    eval_equivalence: EvalEquivalence | None = None

    @property
    def equivalence_passed(self) -> bool:
        checks = [c for c in (self.train_equivalence, self.eval_equivalence) if c is not None]
        return all(c.passed for c in checks)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["equivalence_passed"] = self.equivalence_passed
        return data


# --------------------------------------------------------------------------- paths


def resolve_precision(precision: str, device: torch.device) -> str:
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    if precision not in ("fp32", "bf16"):
        raise AmcError(f"--precision {precision!r} is not one of auto, fp32, bf16")
    return precision


def path_spec(name: str, settings: BenchSettings, device: torch.device) -> PathSpec:
    if name == "fast":
        return PathSpec(
            name="fast",
            attention="fast",
            precision=resolve_precision(settings.precision, device),
            tf32=None,
            optimizer="fused",
            momentum_update="foreach",
            eval_recipe="shared-image",
            eval_batch=settings.eval_batch,
            compile=settings.compile,
        )
    if name in REFERENCE_PATHS:
        return PathSpec(
            name=name,
            attention="reference",
            precision="fp32",
            tf32=name == "reference-tf32" or settings.tf32,
            optimizer="plain",
            momentum_update="loop",
            eval_recipe="per-pair-full-backward",
            eval_batch=settings.reference_eval_batch,
        )
    raise AmcError(f"unknown path {name!r}; paths: {', '.join(PATHS)}")


@contextlib.contextmanager
def path_numerics(spec: PathSpec, device: torch.device) -> Iterator[None]:
    """Set the TF32 switches of a path for the duration of a block (CUDA only)."""
    if device.type != "cuda" or spec.tf32 is None:
        yield
        return
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = spec.tf32
    torch.backends.cudnn.allow_tf32 = spec.tf32
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def autocast_for(spec: PathSpec, device: torch.device) -> contextlib.AbstractContextManager:
    if spec.precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _released_momentum_update(model) -> None:
    """The released ``_momentum_update``: one Python-level update per parameter, new tensors each time."""
    with torch.no_grad():
        m = model.config.momentum
        for online, momentum in model.model_pairs:
            for param, param_m in zip(online.parameters(), momentum.parameters(), strict=True):
                param_m.data = param_m.data * m + param.data * (1.0 - m)


def build_model(config, spec: PathSpec, state_dict: dict[str, Tensor], device: torch.device):
    """An ALBEF with the path's attention and momentum update, holding ``state_dict``'s weights."""
    import types

    from amc.models.albef import ALBEF

    with torch.device(device):
        model = ALBEF(config, attention=spec.attention)
    model.load_state_dict(state_dict)
    if spec.momentum_update == "loop":
        model.momentum_update = types.MethodType(_released_momentum_update, model)
    return model


def build_path_optimizer(model: nn.Module, spec: PathSpec, device: torch.device) -> torch.optim.Optimizer:
    """The engine's AdamW (fused on CUDA) or the released per-parameter AdamW, same parameter groups."""
    from amc.train import build_optimizer

    optim = {"lr": OPTIM["lr"], "weight_decay": OPTIM["weight_decay"]}
    optimizer = build_optimizer(model, optim, device)
    if spec.optimizer == "fused":
        return optimizer
    groups = [{"params": g["params"], "weight_decay": g["weight_decay"]} for g in optimizer.param_groups]
    return torch.optim.AdamW(groups, lr=OPTIM["lr"], foreach=False, fused=False)


def compilable_modules(model) -> list[nn.Module]:
    """The blocks ``--compile`` compiles: every image-encoder block, the text layers before the
    GradCAM layer and every momentum text layer.

    Layers at and after the GradCAM layer are left alone: the AMC loss back-propagates through
    their gradient (double backward), which compiled graphs do not support.
    """
    return [
        *model.visual_encoder.blocks,
        *model.visual_encoder_m.blocks,
        *model.text_encoder.bert.encoder.layer[: model.gradcam_layer],
        *model.text_encoder_m.bert.encoder.layer,
    ]


# --------------------------------------------------------------------------- synthetic data


def special_ids_for(vocab_size: int) -> dict[str, int]:
    """[PAD]/[CLS]/[MASK] ids: bert-base-uncased's for its vocabulary, the synthetic vocab's otherwise."""
    if vocab_size >= 30522:
        return {"pad": 0, "cls": 101, "mask": 103}
    return {"pad": 0, "cls": 2, "mask": 4}


def random_text(
    count: int, length: int, vocab_size: int, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """Token ids and masks of texts between half and all of ``length`` tokens ([CLS] first, padded)."""
    special = special_ids_for(vocab_size)
    first_word = 1000 if vocab_size >= 30522 else 5
    ids = torch.randint(first_word, vocab_size, (count, length), generator=generator)
    lengths = torch.randint(max(2, length // 2), length + 1, (count,), generator=generator)
    lengths[0] = length  # the batch is padded to its longest text, as a real batch is
    mask = (torch.arange(length)[None, :] < lengths[:, None]).long()
    ids[:, 0] = special["cls"]
    ids[mask == 0] = special["pad"]
    return ids, mask


def random_box_masks(count: int, size: int, generator: torch.Generator) -> Tensor:
    """One random box per sample as a 0/1 mask [count, size, size] (at least an eighth of the side)."""
    masks = torch.zeros(count, size, size)
    low = max(1, size // 8)
    for row in range(count):
        h, w = (int(torch.randint(low, size // 2 + 1, (1,), generator=generator)) for _ in range(2))
        y, x = (int(torch.randint(0, size - s + 1, (1,), generator=generator)) for s in (h, w))
        masks[row, y : y + h, x : x + w] = 1.0
    return masks


def make_train_batch(config, batch_size: int, text_len: int, seed: int, device: torch.device):
    from amc.objectives import TrainBatch

    generator = torch.Generator().manual_seed(seed)
    res = config.image_res
    image = torch.randn(batch_size, 3, res, res, generator=generator)
    ids, mask = random_text(batch_size, text_len, config.text.vocab_size, generator)
    box_mask = random_box_masks(
        batch_size, res, generator
    )  # the mask size is the image size (256 in the paper)
    return TrainBatch(
        image=image.to(device),
        input_ids=ids.to(device),
        attention_mask=mask.to(device),
        box_mask=box_mask.to(device),
        has_box=torch.ones(batch_size, dtype=torch.bool),
    )


@dataclass
class EvalCases:
    """Cases of the evaluation benchmark: several phrases per image, image-major order."""

    images: Tensor  # [n_images, 3, R, R] on the device
    image_index: Tensor  # [n_cases] row of ``images`` of each case (on the device)
    input_ids: Tensor  # [n_cases, L] on the device
    attention_mask: Tensor  # [n_cases, L] on the device
    original_sizes: list[tuple[int, int]]  # (height, width) per case, for the pointing point
    phrases_per_image: int

    def __len__(self) -> int:
        return self.input_ids.shape[0]


def make_eval_cases(
    config, n_cases: int, phrases_per_image: int, text_len: int, seed: int, device: torch.device
) -> EvalCases:
    generator = torch.Generator().manual_seed(seed)
    res = config.image_res
    n_images = math.ceil(n_cases / phrases_per_image)
    images = torch.randn(n_images, 3, res, res, generator=generator)
    image_index = torch.arange(n_cases) // phrases_per_image
    ids, mask = random_text(n_cases, text_len, config.text.vocab_size, generator)
    sizes = torch.randint(res, 2 * res + 1, (n_cases, 2), generator=generator).tolist()
    return EvalCases(
        images=images.to(device),
        image_index=image_index.to(device),
        input_ids=ids.to(device),
        attention_mask=mask.to(device),
        original_sizes=[(int(h), int(w)) for h, w in sizes],
        phrases_per_image=phrases_per_image,
    )


# --------------------------------------------------------------------------- the training step


def build_step(model, objectives_name: str):
    from amc.objectives import build_objectives
    from amc.train import TrainingStep

    objectives = build_objectives(OBJECTIVE_SETS[objectives_name])
    for objective in objectives:
        objective.setup(model)
    return TrainingStep(model, objectives, special_ids_for(model.config.text.vocab_size))


def forward_backward(step, batch, spec: PathSpec, device: torch.device, seed: int) -> tuple[Tensor, dict]:
    """One training forward (momentum update, objectives, queue) and its backward."""
    generator = torch.Generator().manual_seed(seed)  # hard negatives and MLM masking
    step.begin_step()
    with autocast_for(spec, device):
        out = step(batch, ALPHA, generator)
    step.end_step([out])
    out.loss.backward()
    return out.loss, out.logs


def train_step(
    step, optimizer, batch, spec: PathSpec, device: torch.device, seed: int
) -> tuple[Tensor, dict]:
    loss, logs = forward_backward(step, batch, spec, device, seed)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss, logs


# --------------------------------------------------------------------------- the evaluation recipes


def reference_gradcam(model, images: Tensor, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
    """The released ``grounding_eval``: the whole model with gradients, then ``loss.backward()``.

    One image per pair (encoded again for every phrase), the ITM class-1 logit summed over the
    batch, ``model.zero_grad()`` and a full backward (every parameter's ``.grad`` is filled,
    image encoder included); the map is made from the captured probabilities and their gradient.
    """
    from amc.gradcam import gradcam_map

    with torch.enable_grad():
        image_embeds = model.encode_image(images)
        text_embeds = model.encode_text(input_ids, attention_mask)
        fused = model.fuse(text_embeds, attention_mask, image_embeds, capture_cross_attention=True)
        probs = fused.cross_attention
        probs.retain_grad()
        score = model.itm_logits(fused.hidden_states[:, 0, :])[:, 1].sum()
        model.zero_grad()
        score.backward()
    return gradcam_map(probs.detach(), probs.grad, attention_mask).detach()


def fast_gradcam(
    model, images: Tensor, image_index: Tensor, input_ids: Tensor, attention_mask: Tensor, autocast
) -> Tensor:
    """The suite's recipe: the images encoded once under no_grad, GradCAM through the fusion layers."""
    from amc.gradcam import gradcam_eval

    with torch.no_grad(), autocast:
        image_embeds = model.encode_image(images)
    with autocast:
        return gradcam_eval(model, image_embeds, input_ids, attention_mask, image_index=image_index)


def eval_batches(cases: EvalCases, spec: PathSpec) -> list[slice]:
    """Case slices per batch: ``eval_batch`` pairs (reference) or whole images' phrases (fast)."""
    n = len(cases)
    if spec.eval_recipe == "per-pair-full-backward":
        size = spec.eval_batch
    else:
        size = max(1, spec.eval_batch // cases.phrases_per_image) * cases.phrases_per_image
    return [slice(start, min(start + size, n)) for start in range(0, n, size)]


def run_eval_batch(model, cases: EvalCases, part: slice, spec: PathSpec, device: torch.device) -> Tensor:
    """GradCAM maps [b, h, w] of the cases in ``part``, as float32 on the host."""
    ids, mask = cases.input_ids[part], cases.attention_mask[part]
    if spec.eval_recipe == "per-pair-full-backward":
        # One image tensor per pair, as the released loader yields (image, text) items.
        maps = reference_gradcam(model, cases.images[cases.image_index[part]], ids, mask)
    else:
        # Batches hold whole images (image-major cases): encode each of them once.
        first = part.start // cases.phrases_per_image
        last = math.ceil(part.stop / cases.phrases_per_image)
        index = cases.image_index[part] - first
        maps = fast_gradcam(model, cases.images[first:last], index, ids, mask, autocast_for(spec, device))
    return maps.float().cpu()


# --------------------------------------------------------------------------- measuring


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm", encoding="ascii") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class PeakMemory:
    """Peak memory over a block: ``torch.cuda.max_memory_allocated`` on CUDA; on the CPU the growth
    of the resident set size over its value at the start, sampled every 5 ms by a thread."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak_bytes = 0
        self.kind = "cuda max_memory_allocated" if device.type == "cuda" else "rss growth (sampled)"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._base = 0

    def __enter__(self) -> PeakMemory:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self._base = _rss_bytes()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def restart(self) -> None:
        """Forget the peak so far (after the FLOP count, whose eager attention needs more memory)."""
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self.peak_bytes = max(0, _rss_bytes() - self._base)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak_bytes = max(self.peak_bytes, _rss_bytes() - self._base)
            self._stop.wait(0.005)

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_bytes = torch.cuda.max_memory_allocated(self.device)
        else:
            self._stop.set()
            self._thread.join()
            self.peak_bytes = max(self.peak_bytes, _rss_bytes() - self._base)

    @property
    def mib(self) -> float:
        return self.peak_bytes / 2**20


def count_flops(model, fn: Callable[[], Any]) -> float | None:
    """FLOPs of ``fn()`` by ``torch.utils.flop_counter.FlopCounterMode``, attention run eagerly.

    Eager attention makes every attention matmul visible to the counter (CPU SDPA kernels are
    not counted); the arithmetic is the same as SDPA's.
    """
    from torch.utils.flop_counter import FlopCounterMode

    mode = model.config.attention
    model.set_attention("reference")
    try:
        with FlopCounterMode(display=False) as counter:
            fn()
        return float(counter.get_total_flops())
    except Exception as error:  # a counter failure must not stop the measurement
        log.warning("FLOP count failed: %s", error)
        return None
    finally:
        model.set_attention(mode)


def tensor_memory_mib(model, optimizer, fn: Callable[[], Any]) -> float:
    """An allocator-independent memory estimate for the CPU, where RSS is too coarse: the bytes of
    the weights and buffers, of the gradients and optimiser state left by ``fn`` (or already there),
    and of every distinct storage autograd saves for the backward while ``fn`` runs."""
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, tuple[int, Tensor]] = {}

    def pack(tensor: Tensor) -> Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in weights:  # held until the end, so no address is reused
            saved[storage.data_ptr()] = (storage.nbytes(), tensor)
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        fn()
    total = sum(nbytes for nbytes, _ in saved.values())
    total += sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    total += sum(p.grad.numel() * p.grad.element_size() for p in model.parameters() if p.grad is not None)
    if optimizer is not None:
        for state in optimizer.state.values():
            total += sum(t.numel() * t.element_size() for t in state.values() if torch.is_tensor(t))
    return total / 2**20


def _rates(
    flops: float | None, per_second: float, peak_tflops: float | None
) -> tuple[float | None, float | None]:
    if flops is None:
        return None, None
    achieved = flops * per_second / 1e12
    return achieved, (achieved / peak_tflops if peak_tflops else None)


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def measure_training(
    spec: PathSpec,
    objectives_name: str,
    config,
    state_dict: dict[str, Tensor],
    settings: BenchSettings,
    device: torch.device,
    peak_tflops: float | None,
) -> TrainMeasurement:
    log.info(
        "training step: path %s, %s objectives, batch %d", spec.name, objectives_name, settings.batch_size
    )
    batch = make_train_batch(config, settings.batch_size, settings.text_len, settings.seed + 1, device)
    compile_error = None
    with path_numerics(spec, device), PeakMemory(device) as memory:
        model = build_model(config, spec, state_dict, device).train()
        step = build_step(model, objectives_name)
        optimizer = build_path_optimizer(model, spec, device)
        flops = count_flops(model, partial(forward_backward, step, batch, spec, device, settings.seed))
        optimizer.zero_grad(set_to_none=True)
        memory.restart()
        if spec.compile:
            compile_error = _try_compile(model, partial(train_step, step, optimizer, batch, spec, device, 0))
        for index in range(settings.warmup):
            train_step(step, optimizer, batch, spec, device, settings.seed + index)
        _sync(device)
        start = time.perf_counter()
        for index in range(settings.steps):
            train_step(step, optimizer, batch, spec, device, settings.seed + settings.warmup + index)
        _sync(device)
        seconds = time.perf_counter() - start
    estimate = None
    if (
        device.type == "cpu"
    ):  # one more step's forward and backward; its gradients count, as at the optimiser step
        seed = settings.seed + settings.warmup + settings.steps
        estimate = tensor_memory_mib(
            model, optimizer, partial(forward_backward, step, batch, spec, device, seed)
        )
    del model, step, optimizer, batch
    _free(device)
    pairs_per_s = settings.steps * settings.batch_size / seconds
    achieved, mfu = _rates(flops, settings.steps / seconds, peak_tflops)
    return TrainMeasurement(
        path=spec.name,
        objectives=objectives_name,
        batch_size=settings.batch_size,
        image_res=config.image_res,
        steps=settings.steps,
        seconds=seconds,
        pairs_per_s=pairs_per_s,
        ms_per_step=1000 * seconds / settings.steps,
        peak_memory_mib=memory.mib,
        memory_kind=memory.kind,
        tensor_memory_mib=estimate,
        flops_per_step=flops,
        achieved_tflops=achieved,
        mfu=mfu,
        compile_error=compile_error,
    )


def _try_compile(model, first_call: Callable[[], Any]) -> str | None:
    """``torch.compile`` the blocks in place and make the first (compiling) call; on failure,
    undo and say why (the path is then measured without compilation)."""
    modules = compilable_modules(model)
    try:
        for module in modules:
            module.compile()
        first_call()
        return None
    except Exception as error:
        log.warning("torch.compile failed, measuring without it: %s", error)
        for module in modules:
            module.__dict__.pop("_compiled_call_impl", None)  # what nn.Module.compile sets
        return f"{type(error).__name__}: {error}"[:500]


def measure_eval(
    spec: PathSpec,
    config,
    state_dict: dict[str, Tensor],
    cases: EvalCases,
    settings: BenchSettings,
    device: torch.device,
    peak_tflops: float | None,
) -> tuple[EvalMeasurement, list[Tensor]]:
    """Cases per second of one path's evaluation; also returns the maps of the measured cases."""
    batches = eval_batches(cases, spec)
    warmup = min(settings.eval_warmup, max(0, len(batches) - 1))
    measured = batches[warmup:]
    n_measured = sum(b.stop - b.start for b in measured)
    log.info(
        "evaluation: path %s (%s), batch %d, %d cases measured",
        spec.name,
        spec.eval_recipe,
        spec.eval_batch,
        n_measured,
    )
    compile_error = None
    maps: list[Tensor] = []
    with path_numerics(spec, device), PeakMemory(device) as memory:
        model = build_model(config, spec, state_dict, device).eval()
        flops = count_flops(model, partial(run_eval_batch, model, cases, batches[0], spec, device))
        flops_per_case = None if flops is None else flops / (batches[0].stop - batches[0].start)
        model.zero_grad(set_to_none=True)
        memory.restart()
        if spec.compile:
            compile_error = _try_compile(
                model, partial(run_eval_batch, model, cases, batches[0], spec, device)
            )
        for part in batches[:warmup]:
            run_eval_batch(model, cases, part, spec, device)
        _sync(device)
        start = time.perf_counter()
        for part in measured:
            maps.append(run_eval_batch(model, cases, part, spec, device))
        _sync(device)
        seconds = time.perf_counter() - start
    estimate = None
    if device.type == "cpu":
        estimate = tensor_memory_mib(
            model, None, partial(run_eval_batch, model, cases, batches[0], spec, device)
        )
    del model
    _free(device)
    cases_per_s = n_measured / seconds
    achieved, mfu = _rates(flops_per_case, cases_per_s, peak_tflops)
    measurement = EvalMeasurement(
        path=spec.name,
        recipe=spec.eval_recipe,
        batch=spec.eval_batch,
        image_res=config.image_res,
        cases=n_measured,
        seconds=seconds,
        cases_per_s=cases_per_s,
        peak_memory_mib=memory.mib,
        memory_kind=memory.kind,
        tensor_memory_mib=estimate,
        flops_per_case=flops_per_case,
        achieved_tflops=achieved,
        mfu=mfu,
        compile_error=compile_error,
    )
    return measurement, maps


def measure_pointing(maps: Tensor, sizes: list[tuple[int, int]]) -> float:
    """Cases per second of the host-side pointing step of ``amc evaluate`` (bicubic upsampling to
    the original size, first maximum), one case at a time as the engine does it."""
    from amc.metrics import pointing_point

    start = time.perf_counter()
    for heatmap, (height, width) in zip(maps, sizes, strict=True):
        pointing_point(heatmap, height, width)
    return len(sizes) / (time.perf_counter() - start)


# --------------------------------------------------------------------------- equivalence


def check_train_equivalence(
    fast: PathSpec,
    reference: PathSpec,
    config,
    state_dict: dict[str, Tensor],
    settings: BenchSettings,
    device: torch.device,
) -> TrainEquivalence:
    """Two AMC training steps of each path from the same weights and batch, dropout off.

    Step 1 compares the forward passes (attention kernels, precision); step 2 also compares the
    optimisers and the momentum updates. Same generator seeds: the same hard negatives and masks.
    """
    log.info("equivalence: training losses, fast vs %s", reference.name)
    batch = make_train_batch(config, settings.batch_size, settings.text_len, settings.seed + 2, device)
    losses: dict[str, list[dict[str, float]]] = {}
    for spec in (fast, reference):
        with path_numerics(spec, device):
            model = build_model(config, spec, state_dict, device).eval()  # eval(): dropout off
            step = build_step(model, "amc")
            optimizer = build_path_optimizer(model, spec, device)
            losses[spec.name] = []
            for index in range(2):
                loss, logs = train_step(step, optimizer, batch, spec, device, settings.seed + 100 + index)
                losses[spec.name].append({"loss": float(loss.detach()), **logs})
        del model, step, optimizer
        _free(device)
    rtol, atol = LOSS_RTOL[fast.precision], LOSS_ATOL[fast.precision]
    comparisons = []
    for index, (a, b) in enumerate(zip(losses[fast.name], losses[reference.name], strict=True)):
        for term in b:
            diff = abs(a[term] - b[term])
            rel = diff / max(abs(b[term]), 1e-12)
            comparisons.append(
                LossComparison(
                    step=index + 1,
                    term=term,
                    fast=a[term],
                    reference=b[term],
                    abs_diff=diff,
                    rel_diff=rel,
                    passed=diff <= rtol * abs(b[term]) + atol,
                )
            )
    return TrainEquivalence(
        precision=fast.precision,
        rtol=rtol,
        atol=atol,
        comparisons=comparisons,
        max_rel_diff=max((c.rel_diff for c in comparisons if abs(c.reference) > atol), default=0.0),
        passed=all(c.passed for c in comparisons),
    )


def pearson(a: Tensor, b: Tensor) -> Tensor:
    """Pearson correlation per row of two [n, d] tensors; a constant row scores 1 if the rows are equal."""
    a, b = a.double(), b.double()
    identical = (a - b).abs().amax(dim=1) == 0
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    denominator = a.norm(dim=1) * b.norm(dim=1)
    corr = (a * b).sum(dim=1) / denominator.clamp_min(1e-300)
    return torch.where(denominator == 0, identical.double(), corr)


def check_eval_equivalence(
    fast: PathSpec,
    reference: PathSpec,
    config,
    state_dict: dict[str, Tensor],
    settings: BenchSettings,
    device: torch.device,
) -> EvalEquivalence:
    """GradCAM maps of both recipes on the same cases: correlation per case and the same point."""
    from amc.metrics import pointing_point

    log.info("equivalence: GradCAM maps, fast vs %s", reference.name)
    cases = make_eval_cases(
        config,
        settings.equivalence_cases,
        settings.phrases_per_image,
        settings.text_len,
        settings.seed + 3,
        device,
    )
    maps: dict[str, Tensor] = {}
    for spec in (fast, reference):
        with path_numerics(spec, device):
            model = build_model(config, spec, state_dict, device).eval()
            maps[spec.name] = torch.cat(
                [run_eval_batch(model, cases, part, spec, device) for part in eval_batches(cases, spec)]
            )
        del model
        _free(device)
    a, b = maps[fast.name], maps[reference.name]
    corr = pearson(a.flatten(1), b.flatten(1))
    same = [
        pointing_point(x, h, w) == pointing_point(y, h, w)
        for x, y, (h, w) in zip(a, b, cases.original_sizes, strict=True)
    ]
    same_fraction = sum(same) / len(same)
    return EvalEquivalence(
        cases=len(cases),
        image_res=config.image_res,
        min_correlation=float(corr.min()),
        mean_correlation=float(corr.mean()),
        same_point_fraction=same_fraction,
        max_abs_diff=float((a - b).abs().max()),
        passed=bool(corr.min() > MIN_CORRELATION) and same_fraction >= MIN_SAME_POINTS,
    )


# --------------------------------------------------------------------------- the whole run


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def resolve_config_path(path: str) -> Path:
    candidate = Path(path)
    if candidate.is_file() or candidate.is_absolute():
        return candidate
    in_repo = REPO / path
    return in_repo if in_repo.is_file() else candidate


def initial_weights(config, seed: int, device: torch.device) -> dict[str, Tensor]:
    """Random weights (the model's own initialisation, seeded), made on ``device``, kept on the host.

    The paths' models load a copy each, so every path starts from exactly these weights.
    """
    from amc.models.albef import ALBEF

    torch.manual_seed(seed)
    with torch.device(device):
        model = ALBEF(config)
    state = {name: tensor.detach().cpu().clone() for name, tensor in model.state_dict().items()}
    del model
    _free(device)
    return state


def _check_settings(settings: BenchSettings, train_config, config_path: Path) -> torch.device:
    device = torch.device(settings.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise AmcError("--device cuda: no CUDA device is available")
    for name in settings.paths:
        if name not in PATHS:
            raise AmcError(f"unknown path {name!r}; paths: {', '.join(PATHS)}")
    for name in settings.measure:
        if name not in MEASUREMENTS:
            raise AmcError(f"unknown measurement {name!r}; one of {', '.join(MEASUREMENTS)}")
    if settings.batch_size < 2:
        raise AmcError("--batch-size must be at least 2 (ITM draws in-batch hard negatives)")
    if train_config.queue_size < settings.batch_size:
        raise AmcError(f"{config_path}: queue_size {train_config.queue_size} is smaller than the batch")
    if train_config.text.max_position_embeddings < settings.text_len:
        raise AmcError(f"--text-len {settings.text_len} exceeds max_position_embeddings of {config_path}")
    return device


def _meta(settings: BenchSettings, config, device: torch.device, command: str, peak: float | None) -> dict:
    from amc.models.albef import ALBEF

    with torch.device("meta"):  # only to count the parameters: no memory
        counted = ALBEF(config)
    return {
        "card": device_name(device),
        "device": str(device),
        "torch": torch.__version__,
        "cuda": torch.version.cuda if device.type == "cuda" else None,
        "command": command,
        "equivalent_command": canonical_command(settings),
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "model_config": str(settings.model_config),
        "parameters": counted.num_parameters(),
        "trainable_parameters": counted.num_parameters(trainable_only=True),
        "gradcam_layer": config.gradcam_layer,
        "cpu_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "load_average_start": _load_average(),
        "peak_tflops": peak,
    }


def run_bench(settings: BenchSettings, command: str = "") -> BenchReport:
    """Equivalence checks, then the training steps, then the evaluation, for every path."""
    from amc.models.config import ModelConfig

    config_path = resolve_config_path(settings.model_config)
    base = ModelConfig.from_file(config_path)
    train_config = base.replace(image_res=settings.image_res or base.image_res)
    eval_config = base.replace(image_res=settings.eval_image_res or train_config.image_res)
    device = _check_settings(settings, train_config, config_path)
    peak = settings.peak_tflops
    if peak is None and device.type == "cuda":
        peak = DEFAULT_PEAK_TFLOPS_CUDA
    specs = [path_spec(name, settings, device) for name in settings.paths]
    report = BenchReport(
        meta=_meta(settings, train_config, device, command, peak),
        settings=dataclasses.asdict(settings),
        paths=specs,
    )
    log.info("amc bench on %s (%s), torch %s", report.meta["card"], device, torch.__version__)
    train_state = initial_weights(train_config, settings.seed, device)
    eval_state = (
        initial_weights(eval_config, settings.seed, device)
        if {"eval", "equivalence"} & set(settings.measure)
        else None
    )

    if "equivalence" in settings.measure:
        # Always against the strict fp32 reference (TF32 off), the fast path uncompiled.
        fast = dataclasses.replace(path_spec("fast", settings, device), compile=False)
        reference = path_spec("reference", dataclasses.replace(settings, tf32=False), device)
        report.train_equivalence = check_train_equivalence(
            fast, reference, train_config, train_state, settings, device
        )
        report.eval_equivalence = check_eval_equivalence(
            fast, reference, eval_config, eval_state, settings, device
        )

    if "train" in settings.measure:
        for spec in specs:
            for objectives_name in ("amc", "albef"):
                report.train.append(
                    measure_training(spec, objectives_name, train_config, train_state, settings, device, peak)
                )
            amc, albef = report.train[-2:]
            report.amc_overhead[spec.name] = amc.ms_per_step / albef.ms_per_step
    del train_state
    _free(device)

    if "eval" in settings.measure:
        cases = make_eval_cases(
            eval_config,
            settings.eval_cases,
            settings.phrases_per_image,
            settings.text_len,
            settings.seed + 4,
            device,
        )
        for spec in specs:
            measurement, maps = measure_eval(spec, eval_config, eval_state, cases, settings, device, peak)
            report.eval.append(measurement)
            if spec.name == "fast" and maps:
                flat = torch.cat(maps)  # the measured cases: the last len(flat) of them
                sizes = cases.original_sizes[len(cases) - len(flat) :]
                report.pointing_cases_per_s = measure_pointing(flat, sizes)

    if "fast" in settings.paths:
        for name in settings.paths:
            if name in REFERENCE_PATHS:
                report.speedups[name] = _speedups(report, "fast", name)
    report.meta["load_average_end"] = _load_average()
    return report


def _speedups(report: BenchReport, fast: str, reference: str) -> dict[str, float]:
    ratios = {}
    train = {(m.path, m.objectives): m for m in report.train}
    for objectives_name in ("amc", "albef"):
        if (fast, objectives_name) in train and (reference, objectives_name) in train:
            a, b = train[(fast, objectives_name)], train[(reference, objectives_name)]
            ratios[f"train_{objectives_name}_throughput"] = a.pairs_per_s / b.pairs_per_s
            ratios[f"train_{objectives_name}_memory"] = _memory_of(a) / max(_memory_of(b), 1e-9)
    evals = {m.path: m for m in report.eval}
    if fast in evals and reference in evals:
        ratios["eval_throughput"] = evals[fast].cases_per_s / evals[reference].cases_per_s
    return ratios


def _memory_of(m: TrainMeasurement | EvalMeasurement) -> float:
    """The memory figure compared between paths: the tensor estimate on the CPU, the CUDA peak otherwise."""
    return m.tensor_memory_mib if m.tensor_memory_mib is not None else m.peak_memory_mib


def _memory_cell(m: TrainMeasurement | EvalMeasurement) -> str:
    if m.tensor_memory_mib is None:
        return _fmt(m.peak_memory_mib / 2**10, 2)
    return f"{_fmt(m.tensor_memory_mib)} (RSS +{_fmt(m.peak_memory_mib)})"


def _load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


# --------------------------------------------------------------------------- the table


def _fmt(value: float | None, digits: int = 1) -> str:
    if value is None:
        return "–"
    if value != 0 and abs(value) < 10 ** (-digits):
        return f"{value:.2g}"
    return f"{value:,.{digits}f}"


def to_markdown(report: BenchReport) -> str:
    meta, settings = report.meta, report.settings
    memory_header = "memory (MiB): tensors (RSS growth)" if meta["device"] == "cpu" else "peak memory (GiB)"
    lines = [
        "# amc bench",
        "",
        f"- card: {meta['card']} ({meta['device']}; torch {meta['torch']}"
        + (f", CUDA {meta['cuda']}" if meta.get("cuda") else f", {meta['cpu_threads']} threads")
        + ")",
        f"- command: `{meta['command']}`",
        f"- the same, every setting spelled out: `{meta['equivalent_command']}`",
        f"- model: `{meta['model_config']}` ({meta['parameters']:,} parameters with the momentum copies), "
        f"GradCAM layer {meta['gradcam_layer']}, text length {settings['text_len']}",
        f"- created {meta['created']}; load average at start {meta['load_average_start']}, "
        f"at end {meta.get('load_average_end')}",
    ]
    if meta.get("peak_tflops"):
        lines.append(f"- MFU against a peak of {meta['peak_tflops']:g} TFLOP/s")
    paths = {p.name: p for p in report.paths}
    if report.train:
        first = report.train[0]
        lines += [
            "",
            f"## Training step (batch {first.batch_size}, {first.image_res} px, {settings['steps']} steps "
            f"after {settings['warmup']} warm-up)",
            "",
            f"| path | objectives | precision | pairs/s | ms/step | {memory_header} | TFLOP/step | TFLOP/s | MFU |",
            "|---|---|---|---:|---:|---:|---:|---:|---:|",
        ]
        for m in report.train:
            lines.append(
                f"| {m.path} | {m.objectives} | {_precision_label(paths[m.path])} | {_fmt(m.pairs_per_s)} | "
                f"{_fmt(m.ms_per_step)} | {_memory_cell(m)} | "
                f"{_fmt(None if m.flops_per_step is None else m.flops_per_step / 1e12, 3)} | "
                f"{_fmt(m.achieved_tflops, 2)} | {_fmt(None if m.mfu is None else 100 * m.mfu)}{'%' if m.mfu else ''} |"
            )
        lines.append("")
        lines.append(
            "AMC step time / plain ALBEF step time: "
            + ", ".join(f"{name} {ratio:.2f}" for name, ratio in report.amc_overhead.items())
        )
        lines.append(f"\n{_MEMORY_NOTE[meta['device'] == 'cpu']}")
    if report.eval:
        first = report.eval[0]
        lines += [
            "",
            f"## Evaluation (GradCAM maps, {first.image_res} px, layer {meta['gradcam_layer']}, "
            f"{settings['phrases_per_image']} phrases per image)",
            "",
            f"| path | recipe | precision | batch | cases | cases/s | ms/case | {memory_header} | GFLOP/case | TFLOP/s | MFU |",
            "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for m in report.eval:
            lines.append(
                f"| {m.path} | {m.recipe} | {_precision_label(paths[m.path])} | {m.batch} | {m.cases} | "
                f"{_fmt(m.cases_per_s)} | {_fmt(1000 / m.cases_per_s, 2)} | {_memory_cell(m)} | "
                f"{_fmt(None if m.flops_per_case is None else m.flops_per_case / 1e9, 2)} | "
                f"{_fmt(m.achieved_tflops, 2)} | {_fmt(None if m.mfu is None else 100 * m.mfu)}{'%' if m.mfu else ''} |"
            )
        if report.pointing_cases_per_s:
            lines.append(
                f"\nPointing on the host (bicubic upsampling to the original size and argmax, one case at a "
                f"time as `amc evaluate` does): {_fmt(report.pointing_cases_per_s)} cases/s."
            )
    if report.speedups:
        lines += ["", "## Fast path / reference path", "", "| against | what | ratio |", "|---|---|---:|"]
        for reference, ratios in report.speedups.items():
            for what, ratio in ratios.items():
                lines.append(f"| {reference} | {_RATIO_LABELS.get(what, what)} | {ratio:.2f}x |")
    if report.train_equivalence or report.eval_equivalence:
        lines += ["", "## Equivalence (fast vs reference fp32, same weights and data)", ""]
        lines += ["| check | value | required | pass |", "|---|---|---|---|"]
        te = report.train_equivalence
        if te is not None:
            worst = max(te.comparisons, key=lambda c: c.rel_diff if abs(c.reference) > te.atol else 0.0)
            lines.append(
                f"| training losses, 2 steps ({te.precision}, dropout off) | max relative difference "
                f"{te.max_rel_diff:.2e} (worst: step {worst.step} {worst.term}) | "
                f"<= {te.rtol:g} relative (+{te.atol:g}) | {_yes(te.passed)} |"
            )
        ee = report.eval_equivalence
        if ee is not None:
            lines.append(
                f"| GradCAM maps, {ee.cases} cases at {ee.image_res} px | correlation min {ee.min_correlation:.6f}, "
                f"mean {ee.mean_correlation:.6f} | > {MIN_CORRELATION} per case | {_yes(ee.min_correlation > MIN_CORRELATION)} |"
            )
            lines.append(
                f"| pointing point | same on {100 * ee.same_point_fraction:.1f}% of cases | >= "
                f"{100 * MIN_SAME_POINTS:g}% | {_yes(ee.same_point_fraction >= MIN_SAME_POINTS)} |"
            )
    return "\n".join(lines) + "\n"


_RATIO_LABELS = {
    "train_amc_throughput": "training AMC pairs/s (speed-up)",
    "train_amc_memory": "training AMC memory (below 1: the fast path uses less)",
    "train_albef_throughput": "training ALBEF pairs/s (speed-up)",
    "train_albef_memory": "training ALBEF memory (below 1: the fast path uses less)",
    "eval_throughput": "evaluation cases/s (speed-up)",
}

_MEMORY_NOTE = {
    False: "Memory: torch.cuda.max_memory_allocated over the whole measurement (model, optimiser, steps).",
    True: "Memory on the CPU: the tensors (weights, buffers, gradients, optimiser state and the activations "
    "autograd saves during one step), and in brackets the growth of the resident set size sampled every "
    "5 ms (coarse: freed memory is reused between measurements).",
}


def _precision_label(spec: PathSpec) -> str:
    if spec.precision == "bf16":
        return "bf16 autocast"
    return "fp32 + TF32" if spec.tf32 else "fp32"


def _yes(flag: bool) -> str:
    return "yes" if flag else "**NO**"


# --------------------------------------------------------------------------- command line


def _csv(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def configure_parser(parser) -> None:
    parser.add_argument(
        "--model-config",
        help=f"model configuration YAML (default: {DEFAULT_CPU_CONFIG} on CPU, {DEFAULT_GPU_CONFIG} on CUDA)",
    )
    parser.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    parser.add_argument(
        "--batch-size", type=positive_int, default=64, help="training pairs per step (default 64)"
    )
    parser.add_argument(
        "--image-res", type=positive_int, help="training resolution (default: the model config's)"
    )
    parser.add_argument(
        "--eval-image-res", type=positive_int, help="evaluation resolution (default: --image-res)"
    )
    parser.add_argument(
        "--text-len", type=positive_int, default=25, help="tokens per text, [CLS] included (default 25)"
    )
    parser.add_argument("--steps", type=positive_int, default=20, help="measured training steps (default 20)")
    parser.add_argument(
        "--warmup", type=nonnegative_int, default=5, help="warm-up steps and evaluation batches (default 5)"
    )
    parser.add_argument(
        "--eval-warmup",
        type=nonnegative_int,
        default=2,
        help="evaluation batches before the clock starts (default 2)",
    )
    parser.add_argument(
        "--eval-cases", type=positive_int, default=256, help="evaluation cases per path (default 256)"
    )
    parser.add_argument(
        "--eval-batch",
        type=positive_int,
        default=64,
        help="fast path: phrases per GradCAM batch (default 64)",
    )
    parser.add_argument(
        "--reference-eval-batch",
        type=positive_int,
        default=8,
        help="reference path: pairs per batch (released: 8)",
    )
    parser.add_argument(
        "--phrases-per-image", type=positive_int, default=8, help="evaluation phrases per image (default 8)"
    )
    parser.add_argument(
        "--equivalence-cases",
        type=positive_int,
        default=64,
        help="cases of the GradCAM equivalence check (default 64)",
    )
    parser.add_argument(
        "--paths",
        type=_csv,
        default=("fast", "reference"),
        help=f"comma-separated paths among {', '.join(PATHS)} (default fast,reference)",
    )
    parser.add_argument(
        "--measure",
        type=_csv,
        default=MEASUREMENTS,
        help=f"comma-separated parts among {', '.join(MEASUREMENTS)} (default: all)",
    )
    parser.add_argument(
        "--precision", default="auto", help="fast path: auto (bf16 on CUDA, fp32 on CPU), fp32 or bf16"
    )
    parser.add_argument("--tf32", action="store_true", help="TF32 matmuls on the reference path")
    parser.add_argument("--compile", action="store_true", help="fast path: torch.compile the encoders")
    parser.add_argument(
        "--peak-tflops",
        type=positive_float,
        help=f"peak for the MFU (default {DEFAULT_PEAK_TFLOPS_CUDA:g} on CUDA: H100 bf16; none on CPU)",
    )
    parser.add_argument("--seed", type=nonnegative_int, default=0)
    parser.add_argument("--out", help="write the results as JSON here")
    parser.add_argument("--markdown", help="write the markdown table here")


def settings_from_args(args) -> BenchSettings:
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    default_config = DEFAULT_GPU_CONFIG if device.startswith("cuda") else DEFAULT_CPU_CONFIG
    for name in (
        "batch_size",
        "text_len",
        "steps",
        "eval_cases",
        "eval_batch",
        "reference_eval_batch",
        "phrases_per_image",
        "equivalence_cases",
    ):
        if getattr(args, name) < 1:
            raise AmcError(f"--{name.replace('_', '-')} must be at least 1")
    if args.warmup < 0 or args.eval_warmup < 0:
        raise AmcError("--warmup and --eval-warmup must be 0 or more")
    return BenchSettings(
        model_config=args.model_config or default_config,
        device=device,
        batch_size=args.batch_size,
        image_res=args.image_res,
        eval_image_res=args.eval_image_res,
        text_len=args.text_len,
        steps=args.steps,
        warmup=args.warmup,
        eval_warmup=args.eval_warmup,
        eval_cases=args.eval_cases,
        eval_batch=args.eval_batch,
        reference_eval_batch=args.reference_eval_batch,
        phrases_per_image=args.phrases_per_image,
        equivalence_cases=args.equivalence_cases,
        paths=tuple(args.paths),
        measure=tuple(args.measure),
        precision=args.precision,
        tf32=args.tf32,
        compile=args.compile,
        peak_tflops=args.peak_tflops,
        seed=args.seed,
    )


def invoked_command() -> str:
    """The command line of this process, with ``python -m amc`` or ``amc`` as its program."""
    program = "python -m amc" if sys.argv[0].endswith("__main__.py") else Path(sys.argv[0]).name
    return " ".join([program, *(shlex.quote(part) for part in sys.argv[1:])])


def canonical_command(settings: BenchSettings) -> str:
    """An ``amc bench`` command that repeats this measurement, every setting spelled out."""
    parts = ["amc", "bench"]
    for name, value in dataclasses.asdict(settings).items():
        option = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            parts += [option] if value else []
        elif isinstance(value, list | tuple):
            parts += [option, ",".join(value)]
        elif value is not None:
            parts += [option, str(value)]
    return " ".join(shlex.quote(part) for part in parts)


def run(args) -> int:
    # Where the results go, before the (minutes long) measurement.
    check_outputs({"--out": args.out, "--markdown": args.markdown}, {"--model-config": args.model_config})
    settings = settings_from_args(args)
    report = run_bench(settings, command=invoked_command())
    table = to_markdown(report)
    if args.out:
        atomic_write_json(args.out, report.to_dict())
        log.info("results -> %s", args.out)
    if args.markdown:
        atomic_write_text(args.markdown, table)
        log.info("table -> %s", args.markdown)
    print(table)
    if not report.equivalence_passed:
        log.error("the fast and the reference paths disagree (see the equivalence table)")
        return 1
    return 0
