"""Checkpoint files: reading, explicit key conversion, loading, saving, export to ALBEF's layout.

Layouts that load (the model's own names are ALBEF's pretraining names, so most keys map
to themselves):

==========================  ===============================================================
``ALBEF.pth``/``ALBEF_4M``  ``{'model': state_dict, 'optimizer': ..., ...}``, ``text_encoder.bert.*``
AMC-grounding checkpoints   the same (released ``Pretrain.py``: ``model``, ``optimizer``,
(``best_flickr.pth``, ...)  ``lr_scheduler``, ``config``, ``epoch``), with ``queue_ptr_img`` +
                            ``queue_ptr_txt`` for ``queue_ptr``; only ``model`` is used
``refcoco.pth`` (ALBEF)     a bare state_dict of the retrieval/grounding class: ``text_encoder.*``
                            without ``.bert``, no MLM head (``cls``), an ``idx_queue``
this project's              ``{'format': 'amc-bench/1', 'model_config': {...}, 'model': state_dict,
                            'vocab': [token, ...], ...}``
==========================  ===============================================================

This project's checkpoints carry what it takes to use them: the model configuration and the
vocabulary (the ``vocab.txt`` lines, 30,522 short strings, a few hundred kB beside the weights),
so :func:`load_model_and_tokenizer` needs nothing else. The other layouts carry neither: the
model configuration and the vocabulary are given (``--model-config``, ``--vocab``).

Files are read with ``torch.load(weights_only=True)``: tensors and plain containers only, no
code runs. A file the safe loader refuses is converted once, by a person who trusts it, with
:func:`convert_checkpoint` (``amc convert-checkpoint SRC DST --trust``), into a file that loads
safely. :func:`export_amc_released` writes a model in the AMC-grounding layout (the demo's
stand-in for the released checkpoints).

Every source key goes through :data:`KEY_RULES` (first match wins) or maps to itself when
the model has it; anything else is an error listing all unmapped keys and all missing ones.
A model key may be absent from the file only if an allow-list group of the purpose covers
it (:data:`MISSING_GROUPS`, :data:`DEFAULT_ALLOWED_MISSING`). Shapes must match exactly,
except ``pos_embed``, which is resized as ALBEF's ``interpolate_pos_embed`` does. Nothing
is loaded with ``strict=False`` and left unchecked.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import logging
import os
import pickle
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from amc.io import AmcError, atomic_write
from amc.models.albef import ALBEF, interpolate_pos_embed
from amc.models.config import ModelConfig
from amc.models.tokenizer import AlbefTokenizer, load_tokenizer

log = logging.getLogger(__name__)

FORMAT = "amc-bench/1"
PURPOSES = ("train", "eval")


# ------------------------------------------------------------------ key rules
@dataclasses.dataclass(frozen=True)
class KeyRule:
    """``pattern`` matched with ``re.fullmatch``; ``replacement`` None means the key is dropped."""

    name: str
    pattern: str
    replacement: str | None
    doc: str


KEY_RULES: tuple[KeyRule, ...] = (
    KeyRule(
        "idx_queue",
        r"idx_queue",
        None,
        "ALBEF's retrieval/grounding class keeps an image-index queue (refcoco.pth); "
        "this model has none and the grounding evaluation never used it.",
    ),
    KeyRule(
        "amc_queue_ptr_img",
        r"queue_ptr_img",
        "queue_ptr",
        "AMC-grounding keeps one pointer per queue; both advance together, the image one is kept.",
    ),
    KeyRule(
        "amc_queue_ptr_txt",
        r"queue_ptr_txt",
        None,
        "AMC-grounding's text-queue pointer: dropped after checking it equals queue_ptr_img.",
    ),
    KeyRule(
        "retrieval_bert_prefix",
        r"(text_encoder(?:_m)?)\.(embeddings|encoder)\.(.*)",
        r"\1.bert.\2.\3",
        "ALBEF's retrieval/grounding classes (refcoco.pth, the eval class) hold the BERT body "
        "directly as text_encoder; the pretraining class (and this model) as text_encoder.bert.",
    ),
)

# Groups of model keys that a checkpoint may lack, by purpose. Regexes over model keys.
MISSING_GROUPS: dict[str, str] = {
    # Most specific first: a key's group in messages is the first that matches; a key may be
    # left out if ANY group it belongs to is allowed (text_encoder_m.cls.* is momentum and mlm_head).
    # A constant arange buffer; newer HF releases stop saving it.
    "position_ids": r"text_encoder(_m)?\.bert\.embeddings\.position_ids",
    # The MLM head (refcoco.pth has none); the decoder weight is tied to the word embeddings.
    "mlm_head": r"text_encoder(_m)?\.cls\..*",
    # The feature queues and their pointer: only the contrastive loss reads them.
    "queues": r"image_queue|text_queue|queue_ptr",
    # Momentum copies: only pretraining/fine-tuning losses read them (re-copied from online if absent).
    "momentum": r"(visual_encoder_m|vision_proj_m|text_encoder_m|text_proj_m)\..*",
}
DEFAULT_ALLOWED_MISSING: dict[str, tuple[str, ...]] = {
    "eval": ("queues", "momentum", "mlm_head", "position_ids"),
    "train": ("position_ids",),
}

_POS_EMBED = re.compile(r"visual_encoder(_m)?\.pos_embed")
_POSITION_IDS = re.compile(MISSING_GROUPS["position_ids"])
# (tied key, key it is tied to) inside each text encoder, as HF ties them.
_TIED = (
    ("cls.predictions.decoder.weight", "bert.embeddings.word_embeddings.weight"),
    ("cls.predictions.decoder.bias", "cls.predictions.bias"),
)


@dataclasses.dataclass
class ConversionReport:
    """Result of :func:`convert_to_model_keys`: what to load and what happened to every key."""

    purpose: str
    state_dict: dict[str, Tensor]  # model key -> tensor, shapes already checked / resized
    renamed: dict[str, str] = dataclasses.field(default_factory=dict)  # source key -> model key
    dropped: dict[str, str] = dataclasses.field(default_factory=dict)  # source key -> reason
    missing_allowed: list[str] = dataclasses.field(default_factory=list)  # model keys left at init
    resized: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = dataclasses.field(default_factory=dict)

    def summary(self) -> str:
        groups: dict[str, int] = {}
        for key in self.missing_allowed:
            groups[_group_of(key) or "other"] = groups.get(_group_of(key) or "other", 0) + 1
        parts = [f"{len(self.state_dict)} keys loaded"]
        if self.renamed:
            parts.append(f"{len(self.renamed)} renamed")
        if self.resized:
            parts.append("resized " + ", ".join(f"{k} {a}->{b}" for k, (a, b) in self.resized.items()))
        if self.dropped:
            parts.append(f"dropped {sorted(self.dropped)}")
        if groups:
            parts.append("left at init: " + ", ".join(f"{g} ({n} keys)" for g, n in sorted(groups.items())))
        return "; ".join(parts)


def _groups_of(key: str) -> list[str]:
    return [group for group, pattern in MISSING_GROUPS.items() if re.fullmatch(pattern, key)]


def _group_of(key: str) -> str | None:
    groups = _groups_of(key)
    return groups[0] if groups else None


def map_key(key: str) -> tuple[str | None, KeyRule | None]:
    """The model key a source key maps to (None = dropped) and the rule used (None = identity)."""
    for rule in KEY_RULES:
        if re.fullmatch(rule.pattern, key):
            if rule.replacement is None:
                return None, rule
            return re.sub(f"^(?:{rule.pattern})$", rule.replacement, key), rule
    return key, None


# ------------------------------------------------------------------- reading
@dataclasses.dataclass
class LoadedCheckpoint:
    path: str
    layout: str  # "amc-bench", "albef" ({'model': sd}), "bare"
    state_dict: dict[str, Tensor]
    model_config: dict[str, Any] | None = None
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def vocab(self) -> list[str] | None:
        """The vocabulary saved with the model (this project's checkpoints), else None."""
        vocab = self.extra.get("vocab") if self.layout == "amc-bench" else None
        if vocab is None:
            return None
        if not isinstance(vocab, list) or not vocab or not all(isinstance(t, str) for t in vocab):
            raise AmcError(f"{self.path}: 'vocab' must be the vocabulary's tokens (a list of strings)")
        return vocab


def read_checkpoint(path: str | Path) -> LoadedCheckpoint:
    """Read any supported layout; a clear AmcError for missing, truncated or foreign files."""
    path = Path(path)
    if not path.is_file():
        raise AmcError(f"{path}: checkpoint not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise AmcError(
            f"{path}: refused by the safe loader ({_refusal_reason(error)}). Only files holding tensors and "
            "plain containers are read (torch.load weights_only=True), because unpickling anything else "
            "can run arbitrary code. If you trust this file (e.g. the authors' released checkpoint), "
            f"convert it once with `amc convert-checkpoint {path} CONVERTED.pth --trust` and use the "
            "converted file."
        ) from None
    except Exception as error:  # zip/EOF/unpickling errors of truncated or foreign files
        raise AmcError(
            f"{path}: cannot read checkpoint, the file is truncated or not a torch checkpoint "
            f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})"
        ) from None
    if not isinstance(obj, dict):
        raise AmcError(f"{path}: not a checkpoint (holds a {type(obj).__name__}, expected a dict)")
    if "format" in obj:
        if obj["format"] != FORMAT:
            raise AmcError(
                f"{path}: unknown checkpoint format {obj['format']!r} (this version reads {FORMAT!r})"
            )
        state_dict = obj.get("model")
        extra = {k: v for k, v in obj.items() if k not in ("format", "model_config", "model")}
        layout, model_config = "amc-bench", obj.get("model_config")
    elif isinstance(obj.get("model"), dict):
        state_dict, layout, model_config = obj["model"], "albef", None
        extra = {k: v for k, v in obj.items() if k != "model"}
    else:
        state_dict, layout, model_config, extra = obj, "bare", None, {}
    if not isinstance(state_dict, dict) or not state_dict:
        raise AmcError(f"{path}: not a checkpoint (no state_dict found)")
    not_tensors = [k for k, v in state_dict.items() if not isinstance(v, Tensor)]
    if not_tensors:
        raise AmcError(
            f"{path}: not a model checkpoint: {len(not_tensors)} entries are not tensors "
            f"(e.g. {not_tensors[:3]})"
        )
    return LoadedCheckpoint(str(path), layout, state_dict, model_config, extra)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _refusal_reason(error: pickle.UnpicklingError) -> str:
    """What the safe loader objected to, in one line (torch's message is a paragraph)."""
    text = str(error)
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if found:
        return f"it holds a {found.group(1)}, which is not a tensor or plain container"
    found = re.search(r"WeightsUnpickler error: ([^\n]+)", text)
    return found.group(1).strip() if found else _first_line(error)


def load_state_dict_file(path: str | Path) -> dict[str, Tensor]:
    """The model state_dict of a checkpoint file, in the file's own naming."""
    return read_checkpoint(path).state_dict


# ----------------------------------------------------------------- conversion
def convert_to_model_keys(
    state_dict: dict[str, Tensor],
    model: ALBEF,
    purpose: str = "train",
    allow_missing: Iterable[str] = (),
    source: str = "checkpoint",
) -> ConversionReport:
    """Map every key of ``state_dict`` onto ``model``'s keys, or raise listing what does not fit.

    ``allow_missing`` adds groups of :data:`MISSING_GROUPS` to the purpose's defaults (e.g.
    ``("mlm_head",)`` to fine-tune from refcoco.pth). Works on meta tensors (names and shapes only).
    """
    if purpose not in PURPOSES:
        raise ValueError(f"purpose must be one of {PURPOSES}, got {purpose!r}")
    allowed_groups = set(DEFAULT_ALLOWED_MISSING[purpose]) | set(allow_missing)
    unknown_groups = allowed_groups - set(MISSING_GROUPS)
    if unknown_groups:
        raise ValueError(
            f"unknown allow_missing group(s) {sorted(unknown_groups)}; known: {sorted(MISSING_GROUPS)}"
        )
    target = model.state_dict(keep_vars=False)
    report = ConversionReport(purpose=purpose, state_dict={})
    unmapped: list[str] = []
    problems: list[str] = []

    if "queue_ptr_img" in state_dict and "queue_ptr_txt" in state_dict:
        img, txt = state_dict["queue_ptr_img"], state_dict["queue_ptr_txt"]
        if not img.is_meta and not txt.is_meta and not torch.equal(img, txt):
            log.warning(
                "%s: queue_ptr_img %s != queue_ptr_txt %s; keeping the image pointer", source, img, txt
            )

    for key, tensor in state_dict.items():
        new_key, rule = map_key(key)
        if new_key is None:
            report.dropped[key] = rule.doc if rule else "dropped"
            continue
        if new_key not in target:
            unmapped.append(key)
            continue
        if new_key in report.state_dict:
            problems.append(f"{key}: maps to {new_key}, which another key already provides")
            continue
        if rule is not None:
            report.renamed[key] = new_key
        expected = tuple(target[new_key].shape)
        got = tuple(tensor.shape)
        if got != expected:
            if _POS_EMBED.fullmatch(new_key) and got[0] == expected[0] and got[-1] == expected[-1]:
                tensor = interpolate_pos_embed(tensor.float(), model.image_grid).to(tensor.dtype)
                report.resized[new_key] = (got, tuple(tensor.shape))
                if tuple(tensor.shape) != expected:
                    problems.append(f"{key}: shape {got} cannot be resized to {expected}")
                    continue
            elif purpose == "eval" and _group_of(new_key) == "queues":
                report.dropped[key] = f"queue of shape {got} != model's {expected}; unused by evaluation"
                continue
            else:
                problems.append(f"{key}: checkpoint shape {got} != model shape {expected} ({new_key})")
                continue
        if _POSITION_IDS.fullmatch(new_key) and not tensor.is_meta:
            if not torch.equal(tensor.long().flatten(), torch.arange(tensor.numel())):
                problems.append(f"{key}: position_ids is not 0..{tensor.numel() - 1}")
                continue
        report.state_dict[new_key] = tensor

    _fill_tied(report, target, source)

    missing = [key for key in target if key not in report.state_dict]
    not_allowed = [key for key in missing if not allowed_groups.intersection(_groups_of(key))]
    if unmapped or not_allowed or problems:
        lines = [f"{source}: cannot load into the model for {purpose}:"]
        if problems:
            lines += ["  shape/value problems:"] + [f"    {p}" for p in problems]
        if unmapped:
            lines += [f"  {len(unmapped)} unmapped checkpoint keys:"] + [f"    {k}" for k in unmapped]
        if not_allowed:
            groups = sorted({g for g in map(_group_of, not_allowed) if g})
            hint = f" (allow with allow_missing={tuple(groups)})" if groups else ""
            lines += [f"  {len(not_allowed)} model keys missing from the checkpoint{hint}:"]
            lines += [f"    {k}" for k in not_allowed]
        raise AmcError("\n".join(lines))
    report.missing_allowed = missing
    return report


def _fill_tied(report: ConversionReport, target: dict[str, Tensor], source: str) -> None:
    """Tied pairs are one tensor in the model: load both names from the checkpoint's embedding/bias."""
    loaded = report.state_dict
    for prefix in ("text_encoder.", "text_encoder_m."):
        for tied, owner in _TIED:
            tied_key, owner_key = prefix + tied, prefix + owner
            if tied_key not in target or owner_key not in loaded:
                continue
            if tied_key in loaded:
                a, b = loaded[tied_key], loaded[owner_key]
                if not a.is_meta and not b.is_meta and not torch.equal(a, b):
                    log.warning(
                        "%s: %s differs from %s although the model ties them; using %s",
                        source,
                        tied_key,
                        owner_key,
                        owner_key,
                    )
            loaded[tied_key] = loaded[owner_key]


def load_converted(model: ALBEF, report: ConversionReport) -> None:
    """Load a conversion into ``model``; verifies that exactly the allowed keys were left out."""
    result = model.load_state_dict(report.state_dict, strict=False)
    missing, unexpected = set(result.missing_keys), set(result.unexpected_keys)
    if unexpected or missing != set(report.missing_allowed):
        raise AmcError(
            f"internal: load left missing={sorted(missing ^ set(report.missing_allowed))} "
            f"unexpected={sorted(unexpected)}"
        )
    momentum_missing = [k for k in report.missing_allowed if "momentum" in _groups_of(k) and ".cls." not in k]
    if momentum_missing:
        # ALBEF initialises the momentum copies from the online weights.
        model.copy_params()
        log.info("momentum copies absent from the checkpoint: copied from the online weights")


def load_model(
    checkpoint_path: str | Path | LoadedCheckpoint,
    model_config: ModelConfig | None = None,
    purpose: str = "eval",
    attention: str | None = None,
    allow_missing: Iterable[str] = (),
) -> ALBEF:
    """Build ALBEF(model_config) and load a checkpoint of any supported layout (a path, or a file
    already read) into it.

    A project checkpoint carries its model_config: without ``model_config`` it is used; with
    one, the architectures must match (image_res, gradcam_layer, queue_size, momentum, temp
    and attention may differ; pos_embed is resized to ``model_config.image_res``).
    """
    if isinstance(checkpoint_path, LoadedCheckpoint):
        checkpoint, checkpoint_path = checkpoint_path, checkpoint_path.path
    else:
        checkpoint = read_checkpoint(checkpoint_path)
    if checkpoint.model_config is not None:
        own = ModelConfig.from_dict(checkpoint.model_config, source=f"{checkpoint_path} (model_config)")
        if model_config is None:
            model_config = own
        else:
            check_same_architecture(own, model_config, str(checkpoint_path))
    if model_config is None:
        raise AmcError(f"{checkpoint_path}: an ALBEF-layout checkpoint carries no model config; pass one")
    model = ALBEF(model_config, attention=attention)
    report = convert_to_model_keys(
        checkpoint.state_dict, model, purpose, allow_missing=allow_missing, source=str(checkpoint_path)
    )
    load_converted(model, report)
    log.info("%s (%s layout): %s", checkpoint_path, checkpoint.layout, report.summary())
    return model


@dataclasses.dataclass
class ModelAndTokenizer:
    model: ALBEF
    tokenizer: AlbefTokenizer


def load_model_and_tokenizer(
    checkpoint_path: str | Path,
    model_config: str | Path | None = None,
    vocab: str | Path | None = None,
    *,
    image_res: int | None = None,
    purpose: str = "eval",
) -> ModelAndTokenizer:
    """A checkpoint's model and the tokenizer of its vocabulary, as ``amc evaluate`` and ``amc
    gradcam`` use them.

    ``model_config`` (a YAML/JSON file) and ``vocab`` (``vocab.txt`` or its folder) override
    what this project's checkpoints carry; the other layouts (ALBEF.pth, the authors' released
    checkpoints, exports) carry neither, so both must be given. ``image_res`` replaces the
    configuration's input resolution.
    """
    checkpoint = read_checkpoint(checkpoint_path)
    if model_config is not None:
        config = ModelConfig.from_file(model_config)
    elif checkpoint.model_config is not None:
        config = ModelConfig.from_dict(checkpoint.model_config, source=f"{checkpoint_path} (model_config)")
    else:
        raise AmcError(
            f"{checkpoint_path}: a checkpoint in the {checkpoint.layout} layout (ALBEF.pth, the authors' "
            "released checkpoints, an export) carries no model configuration: give one (--model-config, "
            "e.g. config/models/albef-base.yaml)"
        )
    if image_res is not None:
        config = config.replace(image_res=image_res)
    if vocab is not None:
        tokenizer = load_tokenizer(vocab)
        if checkpoint.vocab is not None and checkpoint.vocab != tokenizer.ids_to_tokens:
            log.warning(
                "%s: the vocabulary %s differs from the one saved with the model", checkpoint_path, vocab
            )
    elif checkpoint.vocab is not None:
        tokenizer = AlbefTokenizer(checkpoint.vocab, source=f"{checkpoint_path} (vocab)")
    else:
        what = (
            "an older checkpoint of this project"
            if checkpoint.layout == "amc-bench"
            else (f"a checkpoint in the {checkpoint.layout} layout")
        )
        raise AmcError(
            f"{checkpoint_path}: {what} carries no vocabulary: give one (--vocab, the BERT vocab.txt "
            "the model was trained with)"
        )
    if tokenizer.vocab_size != config.text.vocab_size:
        raise AmcError(
            f"{tokenizer.source}: {tokenizer.vocab_size} tokens, but the model configuration declares "
            f"vocab_size {config.text.vocab_size}"
        )
    return ModelAndTokenizer(load_model(checkpoint, config, purpose=purpose), tokenizer)


def check_same_architecture(stored: ModelConfig, wanted: ModelConfig, source: str) -> None:
    a, b = _flatten(stored.architecture_dict()), _flatten(wanted.architecture_dict())
    differing = [
        f"{key}: checkpoint {a.get(key)!r} vs given {b.get(key)!r}"
        for key in sorted(a | b)
        if a.get(key) != b.get(key)
    ]
    if differing:
        raise AmcError(
            f"{source}: the checkpoint's model_config does not match the given one:\n  "
            + "\n  ".join(differing)
        )


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


# -------------------------------------------------------------------- writing
def save_checkpoint(path: str | Path, model: ALBEF, /, **extra: Any) -> None:
    """Write ``{'format', 'model_config', 'model', **extra}`` atomically (the trainer adds its state
    and ``vocab``, the tokenizer's tokens, which :attr:`LoadedCheckpoint.vocab` reads back)."""
    reserved = {"format", "model_config", "model"} & set(extra)
    if reserved:
        raise ValueError(f"save_checkpoint: {sorted(reserved)} are reserved names")
    obj = {"format": FORMAT, "model_config": model.config.to_dict(), "model": model.state_dict(), **extra}
    with atomic_write(path, "wb") as handle:
        torch.save(obj, handle)


def export_albef(model: ALBEF) -> dict[str, Any]:
    """ALBEF.pth's layout, ``{'model': state_dict}`` with ALBEF's pretraining key names.

    The tensors are copies; tied weights stay one tensor (as in ALBEF's own files).
    """
    copies: dict[int, Tensor] = {}
    state = {}
    for key, value in model.state_dict().items():
        if value.is_meta:
            state[key] = value
            continue
        ident = (value.data_ptr(), tuple(value.shape), value.stride(), value.dtype)
        if ident not in copies:
            copies[ident] = value.detach().clone()
        state[key] = copies[ident]
    return {"model": state}


def export_amc_released(
    model: ALBEF,
    config: dict[str, Any],
    epoch: int | None = None,
    optimizer: dict[str, Any] | None = None,
    lr_scheduler: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The AMC-grounding checkpoint layout (released ``Pretrain.py``), e.g. ``best_flickr.pth``.

    ``{'model', ['optimizer', 'lr_scheduler',] 'config', ['epoch']}`` with the pretraining
    class's key names and one queue pointer per queue (``queue_ptr_img``, ``queue_ptr_txt``,
    equal) in place of ``queue_ptr``; ``config`` is the training configuration.
    """
    state: dict[str, Tensor] = {}
    for key, value in export_albef(model)["model"].items():
        if key == "queue_ptr":
            state["queue_ptr_img"] = value
            state["queue_ptr_txt"] = value.clone()
        else:
            state[key] = value
    exported: dict[str, Any] = {"model": state}
    if optimizer is not None:
        exported["optimizer"] = optimizer
    if lr_scheduler is not None:
        exported["lr_scheduler"] = lr_scheduler
    exported["config"] = config
    if epoch is not None:
        exported["epoch"] = epoch
    return exported


def save_torch_file(path: str | Path, obj: Any) -> None:
    """``torch.save`` atomically, then check the file loads with the safe loader (else it is removed)."""
    path = Path(path)
    with atomic_write(path, "wb") as handle:
        torch.save(obj, handle)
    try:
        read_checkpoint(path)
    except AmcError:
        path.unlink(missing_ok=True)
        raise


# --------------------------------------------------------------- conversion of trusted files
_PLAIN_SCALARS = (type(None), bool, int, float, complex, str, bytes, torch.dtype, torch.device)


def _plain(value: Any, where: str, dropped: list[str]) -> Any:
    """``value`` with only what the safe loader accepts.

    Containers are rebuilt, numpy values become Python numbers or tensors, an
    ``argparse.Namespace`` (ALBEF-style ``args``) becomes a dict; anything else becomes None
    and its place is named in ``dropped``.
    """
    if isinstance(value, Tensor):
        return value.detach()  # a Parameter becomes a plain tensor (shared storage is kept)
    if isinstance(value, _PLAIN_SCALARS) or type(value) is torch.Size:
        return value
    if isinstance(value, dict):
        rebuilt = collections.OrderedDict() if isinstance(value, collections.OrderedDict) else {}
        for key, item in value.items():
            if not isinstance(key, _PLAIN_SCALARS):
                dropped.append(f"{where}[{key!r}] (key of type {type(key).__qualname__})")
                continue
            rebuilt[key] = _plain(item, f"{where}[{key!r}]", dropped)
        return rebuilt
    if isinstance(value, list | tuple | set):
        items = [_plain(item, f"{where}[{i}]", dropped) for i, item in enumerate(value)]
        return items if isinstance(value, list) else tuple(items) if isinstance(value, tuple) else set(items)
    if isinstance(value, argparse.Namespace):
        return _plain(vars(value), where, dropped)
    if type(value).__module__ == "numpy":
        import numpy as np

        return torch.from_numpy(np.array(value)) if isinstance(value, np.ndarray) else value.item()
    dropped.append(f"{where} ({type(value).__module__}.{type(value).__qualname__})")
    return None


@dataclasses.dataclass
class Conversion:
    """Result of :func:`convert_checkpoint`."""

    src: Path
    dst: Path
    unpickled: bool  # True when the file needed full unpickling (--trust)
    dropped: list[str]  # places of values that were not plain data and were left out


def convert_checkpoint(src: str | Path, dst: str | Path, trust: bool = False) -> Conversion:
    """Rewrite a checkpoint the safe loader refuses into one it reads (``amc convert-checkpoint``).

    The output keeps the file's layout (``{'model': ..., 'config': ..., ...}``) with only tensors and
    plain containers, written with ``torch.save`` (so every command reads it through
    :func:`read_checkpoint`; safetensors cannot hold the nested optimizer state and config, nor
    tied weights). ``src`` is unpickled in full ONLY with ``trust=True``: a pickle can run
    arbitrary code while it loads. ``dst`` is written atomically and never over ``src``.
    """
    src, dst = Path(src), Path(dst)
    if not src.is_file():
        raise AmcError(f"{src}: checkpoint not found")
    if dst.resolve() == src.resolve() or (dst.exists() and os.path.samefile(src, dst)):
        raise AmcError(f"{dst}: the converted file must not replace its source {src}; name another path")
    try:
        obj = torch.load(src, map_location="cpu", weights_only=True)
        unpickled = False
        log.info("%s loads with the safe loader already; writing it as plain data to %s", src, dst)
    except pickle.UnpicklingError as error:
        if not trust:
            raise AmcError(
                f"{src}: the safe loader refuses it ({_refusal_reason(error)}). Converting it means unpickling "
                "it in full (torch.load weights_only=False), and a pickle can run arbitrary code on this "
                "machine while it loads. Do it only for a file you trust, e.g. one downloaded from the "
                "authors' own release and verified against checksums.lock.json: add --trust."
            ) from None
        log.warning(
            "%s: unpickling in full (torch.load weights_only=False) because --trust was given; a "
            "malicious pickle can run arbitrary code on this machine. The result, %s, holds plain data only.",
            src,
            dst,
        )
        try:
            obj = torch.load(src, map_location="cpu", weights_only=False)
        except Exception as load_error:  # a truncated or foreign file, also when trusted
            raise AmcError(
                f"{src}: cannot read checkpoint ({type(load_error).__name__}: {_first_line(load_error)})"
            ) from None
        unpickled = True
    except Exception as error:
        raise AmcError(
            f"{src}: cannot read checkpoint ({type(error).__name__}: {_first_line(error)})"
        ) from None
    dropped: list[str] = []
    plain = _plain(obj, "checkpoint", dropped)
    if dropped:
        log.warning("%s: left out (not plain data): %s", src, "; ".join(dropped))
    save_torch_file(dst, plain)
    log.info("%s: wrote %s", src, dst)
    return Conversion(src, dst, unpickled, dropped)
