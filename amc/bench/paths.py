"""The paths compared, ``fast`` (the suite's engine) and ``reference`` (the released code's), as
:mod:`amc.bench` describes them: how each builds its model and optimiser, runs a training step
and makes GradCAM maps."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from amc.bench.data import EvalCases, special_ids_for
from amc.bench.settings import ALPHA, OBJECTIVE_SETS, OPTIM, PATHS, REFERENCE_PATHS, BenchSettings
from amc.io import AmcError


@dataclass
class PathSpec:
    """How one path runs (see :mod:`amc.bench`)."""

    name: str
    attention: str  # "fast" or "reference" (amc.models.albef.ALBEF.set_attention)
    precision: str  # "bf16" (autocast) or "fp32"
    tf32: bool | None  # TF32 matmuls on CUDA; None leaves torch's defaults
    optimizer: str  # "fused": the engine's (fused on CUDA, torch's default on CPU); "plain": per-parameter
    momentum_update: str  # "foreach" or "loop"
    eval_recipe: str  # "shared-image" (gradcam_eval, fusion-only backward) or "per-pair-full-backward"
    eval_batch: int
    compile: bool = False


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
    from amc.run_config import OptimConfig
    from amc.train import build_optimizer

    optimizer = build_optimizer(model, OptimConfig.from_defaults(**OPTIM), device)
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
