"""Measuring one path: throughput, peak memory, FLOPs and achieved TFLOP/s of the training step and the evaluation."""

from __future__ import annotations

import gc
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import Tensor

from amc.bench.data import EvalCases, make_train_batch
from amc.bench.paths import (
    PathSpec,
    build_model,
    build_path_optimizer,
    build_step,
    compilable_modules,
    eval_batches,
    forward_backward,
    path_numerics,
    run_eval_batch,
    train_step,
)
from amc.bench.settings import BenchSettings

log = logging.getLogger(__name__)


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


def free_memory(device: torch.device) -> None:
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
    free_memory(device)
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
    free_memory(device)
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
