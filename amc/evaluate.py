"""``amc evaluate``: pointing accuracy of a checkpoint on grounding records.

The released protocol (``grounding_eval_singlegpu*.py``): the model in eval mode,
images resized to a square (no crop) at the benchmark's resolution and in the
benchmark's way, phrases through pre_caption and the tokenizer without a token
cap (:class:`EvalInputs`), GradCAM of the ITM score from the
cross-attention of the GradCAM layer, the map upsampled bicubically to the
original image size, the first maximum as the point, a hit when strictly
inside any of the case's boxes.

Fast by design: each image is encoded once, under ``torch.no_grad``, for all of
its phrases; the backward pass that makes GradCAM runs through the fusion layers
only; a batch of phrases mixes phrases of several images (``image_index`` maps
each phrase to its image).

Every case also records the energy in its boxes (:func:`amc.metrics.energy_in_boxes`).
With ``--explainer`` (repeatable) the same protocol scores other maps of the model
(:mod:`amc.explainers`): one result per explainer and split, all from one pass over the
images and, for the gradient explainers, one backward pass per batch.
"""

from __future__ import annotations

import datetime
import functools
import logging
import subprocess
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from amc.cli import nonnegative_int, positive_int
from amc.data.images import ImageChecker, load_image
from amc.data.transforms import EVAL_RESIZES, EvalTransform
from amc.explainers import GRADCAM, Explainer, explain, parse_explainers
from amc.io import AmcError, DataError, atomic_write_json, check_outputs, is_finite_number, sha256_file
from amc.metrics import argmax_points, box_hit, classify_miss, energy_in_boxes, upsample_heatmap
from amc.records import Record, load_records, read_prepare_report
from amc.result_format import CaseResult, EvaluationResult, validate_result

log = logging.getLogger(__name__)

# How a benchmark's images and phrases enter the model at evaluation, as the released
# grounding_eval_singlegpu*.py scripts do. `amc evaluate`, model selection (amc.selection),
# `amc gradcam` and the reports' qualitative figure all go through EvalInputs.for_benchmark.
#
# Words kept by ALBEF's pre_caption (released dataset/grounding_dataset.py).
MAX_WORDS = {"flickr30k": 50, "refcoco+": 30}
DEFAULT_MAX_WORDS = 30
# The square resize of the image (amc.data.transforms.EVAL_RESIZES): Flickr30k through
# albumentations Resize on the RGB array (released dataset/__init__.py, grounding_flickr),
# RefCOCO+ and RefCLEF through torchvision's bicubic Resize on the PIL image (its test_transform).
EVAL_RESIZE = {"flickr30k": "cv2-linear", "refcoco+": "pil-bicubic"}
DEFAULT_EVAL_RESIZE = "pil-bicubic"
AUTO = "auto"  # an explicit "the benchmark's own" for --resize


def max_words_for(benchmark: str | None, override: int | None = None) -> int:
    """Words kept by pre_caption on ``benchmark`` (``override`` when given)."""
    return override or MAX_WORDS.get(benchmark, DEFAULT_MAX_WORDS)


def resize_for(benchmark: str | None, override: str | None = None) -> str:
    """The evaluation resize of ``benchmark`` (``override`` when given and not ``auto``)."""
    if override in (None, AUTO):
        return EVAL_RESIZE.get(benchmark, DEFAULT_EVAL_RESIZE)
    if override not in EVAL_RESIZES:
        raise AmcError(f"resize must be one of {', '.join((AUTO, *EVAL_RESIZES))}, not {override!r}")
    return override


@dataclass(frozen=True)
class EvalInputs:
    """The image transform and the text handling of one benchmark's evaluation."""

    image_res: int
    resize: str  # amc.data.transforms.EVAL_RESIZES
    max_words: int

    @classmethod
    def for_benchmark(
        cls, benchmark: str | None, image_res: int, *, resize: str | None = None, max_words: int | None = None
    ) -> EvalInputs:
        """``benchmark``'s inputs (None or an unknown name: the defaults); explicit overrides win."""
        return cls(image_res, resize_for(benchmark, resize), max_words_for(benchmark, max_words))

    def transform(self) -> EvalTransform:
        """The image transform: a PIL image -> normalised float [3, image_res, image_res]."""
        return EvalTransform(self.image_res, self.resize)

    def text(self, phrase: str) -> str:
        """ALBEF's pre_caption with the benchmark's word limit ("" when nothing is left)."""
        from amc.models.tokenizer import pre_caption

        return pre_caption(phrase, self.max_words)

    def tokens(self, tokenizer, texts: list[str], max_positions: int):
        """Texts -> tokens, padded only: no token cap, as released (a cap could cut word pieces).

        A text longer than the model's ``max_positions`` position embeddings is an error, not cut.
        """
        tokens = tokenizer(texts, max_length=None)
        lengths = tokens.attention_mask.sum(dim=1)
        if int(lengths.max()) > max_positions:
            row = int(lengths.argmax())
            raise AmcError(
                f"evaluation text {texts[row]!r} is {int(lengths[row])} tokens ([CLS] + word pieces), more "
                f"than the model's {max_positions} position embeddings; keep fewer words (--max-words)"
            )
        return tokens


class _ImageSet(torch.utils.data.Dataset):
    """Unique images of the records, each loaded and transformed once."""

    def __init__(self, paths: list[str], transform, names: list[str]):
        self.paths, self.transform, self.names = paths, transform, names  # names: a record of each image

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        # No replacement at evaluation: an unreadable image stops the run, naming a record.
        return self.transform(load_image(self.paths[index], self.names[index]))


@functools.cache  # one `git` call per process, not one per split
def _code_version() -> str:
    import amc

    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = ""
    return f"amc {amc.__version__}" + (f" ({sha})" if sha else "")


def _load_proposals(path: str | None) -> dict[str, list]:
    """Detector proposals per image id (MAttNet's file as ALBEF uses it: {image_id: [[x, y, w, h, ...], ...]})."""
    if not path:
        return {}
    from amc.io import read_json

    data = read_json(path)
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a mapping image_id -> list of [x, y, w, h] boxes")
    proposals = {}
    for key, boxes in data.items():
        if not isinstance(boxes, list) or not all(
            isinstance(b, list) and len(b) >= 4 and all(is_finite_number(v) for v in b[:4]) for b in boxes
        ):
            raise DataError(
                f"{path}: image {key!r}: expected a list of [x, y, w, h, ...] boxes of finite numbers"
            )
        proposals[str(key)] = [[float(v) for v in b[:4]] for b in boxes]
    return proposals


@torch.no_grad()
def _encode_images(model, images: torch.Tensor) -> torch.Tensor:
    return model.encode_image(images).detach()


@dataclass
class _PhraseBatch:
    """Phrases of several images with their images' embeddings, ready for a map function."""

    records: list[Record]
    image_embeds: torch.Tensor  # one row per image of the batch
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    image_index: torch.Tensor  # each phrase's row of image_embeds


def _phrase_batches(
    model,
    tokenizer,
    records: list[Record],
    *,
    inputs: EvalInputs,
    device: torch.device,
    images_per_batch: int,
    phrases_per_batch: int,
    num_workers: int,
    skipped: Counter,
) -> Iterator[_PhraseBatch]:
    """Every record in batches of phrases; each image is loaded and encoded once for all its phrases.

    A phrase empty after clean-up is counted in ``skipped`` and left out.
    """
    from tqdm import tqdm

    if inputs.image_res != model.config.image_res:
        raise AmcError(
            f"evaluation at {inputs.image_res} px needs a model at that resolution, not {model.config.image_res}"
        )
    by_image: dict[str, list[Record]] = defaultdict(list)
    for record in records:
        by_image[record.image].append(record)
    paths = list(by_image)
    loader = torch.utils.data.DataLoader(
        _ImageSet(paths, inputs.transform(), [f"record {by_image[p][0].id}" for p in paths]),
        batch_size=images_per_batch,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",  # pragma: no mutate (device)
    )
    model.eval()
    progress = tqdm(total=len(records), desc="evaluate", unit="case", mininterval=5.0)
    for batch_number, images in enumerate(loader):
        batch_paths = paths[batch_number * images_per_batch : (batch_number + 1) * images_per_batch]
        images = images.to(device, non_blocking=True)  # pragma: no mutate (device)
        image_embeds = _encode_images(model, images)
        phrases = [(i, r) for i, p in enumerate(batch_paths) for r in by_image[p]]
        for start in range(0, len(phrases), phrases_per_batch):
            chunk, texts = [], []
            for i, r in phrases[start : start + phrases_per_batch]:
                if text := inputs.text(r.phrase):
                    chunk.append((i, r))
                    texts.append(text)
                else:
                    skipped["phrase empty after clean-up"] += 1
                    log.warning("%s: phrase %r is empty after clean-up; skipped", r.id, r.phrase)
            if not chunk:
                continue
            tokens = inputs.tokens(tokenizer, texts, model.config.text.max_position_embeddings)
            yield _PhraseBatch(
                records=[r for _, r in chunk],
                image_embeds=image_embeds,
                input_ids=tokens.input_ids.to(device),  # pragma: no mutate (device)
                attention_mask=tokens.attention_mask.to(device),  # pragma: no mutate (device)
                image_index=torch.tensor([i for i, _ in chunk], device=device),  # pragma: no mutate (device)
            )
            progress.update(len(chunk))
    progress.close()


def evaluate(
    model,
    tokenizer,
    records: list[Record],
    *,
    inputs: EvalInputs,
    device: torch.device,
    images_per_batch: int = 16,
    phrases_per_batch: int = 64,
    num_workers: int = 2,
    proposals: dict[str, list] | None = None,
    on_heatmap=None,
) -> tuple[list[CaseResult], Counter]:
    """Evaluate ``records`` with ``inputs`` (the benchmark's image transform and text handling);
    returns the per-case results and the skipped counts by reason.

    The paper's map: GradCAM at the model's ``gradcam_layer`` (:func:`amc.gradcam.gradcam_eval`).
    ``on_heatmap(record, heatmap)`` is called with each grid-resolution map (for figures).
    """
    from amc.gradcam import gradcam_eval

    cases: list[CaseResult] = []
    skipped: Counter = Counter()
    batches = _phrase_batches(
        model,
        tokenizer,
        records,
        inputs=inputs,
        device=device,
        images_per_batch=images_per_batch,
        phrases_per_batch=phrases_per_batch,
        num_workers=num_workers,
        skipped=skipped,
    )
    for batch in batches:
        heatmaps = (
            gradcam_eval(
                model,
                batch.image_embeds,
                batch.input_ids,
                batch.attention_mask,
                image_index=batch.image_index,
            )
            .float()
            .cpu()
        )
        cases.extend(score_cases(batch.records, heatmaps, proposals))
        if on_heatmap is not None:
            for record, heatmap in zip(batch.records, heatmaps, strict=True):
                on_heatmap(record, heatmap)
    return cases, skipped


def evaluate_explainers(
    model,
    tokenizer,
    records: list[Record],
    explainers: Sequence[Explainer],
    *,
    inputs: EvalInputs,
    device: torch.device,
    images_per_batch: int = 16,
    phrases_per_batch: int = 64,
    num_workers: int = 2,
    proposals: dict[str, list] | None = None,
) -> tuple[dict[Explainer, list[CaseResult]], Counter]:
    """As :func:`evaluate`, for several explainers (:class:`amc.explainers.Explainer`, resolved) at once:
    the images are encoded once and each batch of phrases makes every explainer's maps in one fusion
    pass (:func:`amc.explainers.explain`). Returns {explainer: per-case results} and the skipped counts."""
    cases: dict[Explainer, list[CaseResult]] = {explainer: [] for explainer in explainers}
    skipped: Counter = Counter()
    batches = _phrase_batches(
        model,
        tokenizer,
        records,
        inputs=inputs,
        device=device,
        images_per_batch=images_per_batch,
        phrases_per_batch=phrases_per_batch,
        num_workers=num_workers,
        skipped=skipped,
    )
    for batch in batches:
        maps = explain(
            model,
            batch.image_embeds,
            batch.input_ids,
            batch.attention_mask,
            explainers,
            image_index=batch.image_index,
        )
        for explainer, heatmaps in maps.items():
            cases[explainer].extend(score_cases(batch.records, heatmaps.float().cpu(), proposals))
    return cases, skipped


def score_cases(
    records: list[Record], heatmaps: torch.Tensor, proposals: dict[str, list] | None = None
) -> list[CaseResult]:
    """Point and score each record's ``[h, w]`` map of ``heatmaps`` ``[B, h, w]``, in order.

    The maps of records of the same original size (the phrases of one image) are upsampled in one
    call: the same numbers as one call per map (the kernel computes each output pixel alone), with
    the per-call work (interpolation weights, dispatch) paid once per image instead of once per phrase.
    """
    by_size: dict[tuple[int, int], list[int]] = defaultdict(list)
    for index, record in enumerate(records):
        by_size[(record.height, record.width)].append(index)
    results: list[CaseResult | None] = [None] * len(records)
    for (height, width), indices in by_size.items():
        upsampled = upsample_heatmap(heatmaps[indices], height, width)
        for index, one, point in zip(indices, upsampled, argmax_points(upsampled), strict=True):
            results[index] = _score_upsampled(records[index], one, point, proposals)
    return results  # type: ignore[return-value]


def _score(record: Record, heatmap: torch.Tensor, proposals: dict[str, list] | None) -> CaseResult:
    """One record's ``[h, w]`` map, pointed and scored."""
    return score_cases([record], heatmap[None], proposals)[0]


def _score_upsampled(
    record: Record, upsampled: torch.Tensor, point: tuple[int, int], proposals: dict[str, list] | None
) -> CaseResult:
    miss = classify_miss(point, record.boxes, record.other_boxes)
    energy = energy_in_boxes(upsampled, record.boxes)
    result = CaseResult(
        id=record.id,
        point=list(point),
        hit=miss is None,
        miss=miss,
        category=record.category,
        energy=None if energy is None else round(energy, 6),
    )
    if proposals:
        image_proposals = proposals.get(str(record.image_id))
        result.box_hit = box_hit(upsampled, image_proposals, record.boxes[0]) if image_proposals else False
    return result


def check_images(records: list[Record], skip_missing: bool) -> tuple[list[Record], Counter]:
    """Missing or unreadable images (header check) are an error naming the record, or skipped and
    counted with ``skip_missing``; evaluation never replaces a case."""
    kept, skipped = [], Counter()
    checker = ImageChecker()
    for record in records:
        error = checker.problem(record.image)
        if error is None:
            kept.append(record)
        elif skip_missing:
            skipped[error.reason] += 1
        else:
            raise DataError(
                f"record {record.id}: {error} (pass --skip-missing-images to count such cases as skipped)"
            )
    for reason, count in skipped.items():
        log.warning("%d cases skipped: %s", count, reason)
    return kept, skipped


def configure_parser(parser) -> None:
    parser.add_argument(
        "--checkpoint",
        required=True,
        nargs="+",
        help="ALBEF.pth, refcoco.pth, an AMC checkpoint, or ours; one for all splits or one per split",
    )
    parser.add_argument(
        "--model-config",
        help="model configuration YAML (config/models/); default: the one saved in this project's "
        "checkpoints (ALBEF.pth and the released checkpoints carry none: give it)",
    )
    parser.add_argument(
        "--vocab",
        help="folder with vocab.txt, or the file; default: the vocabulary saved in this project's "
        "checkpoints (ALBEF.pth and the released checkpoints carry none: give it)",
    )
    # Several splits in one process (the model is loaded once): --records, --split and --out take
    # one value per split, in the same order; --benchmark and --image-res one per split or one for all.
    parser.add_argument("--records", required=True, nargs="+", help="records JSONL from amc prepare")
    parser.add_argument(
        "--benchmark", required=True, nargs="+", help="flickr30k, refcoco+ (decides the word limit)"
    )
    parser.add_argument("--split", required=True, nargs="+")
    parser.add_argument("--out", required=True, nargs="+", help="result JSON (summary + every case)")
    parser.add_argument(
        "--image-res",
        type=positive_int,
        nargs="+",
        help="evaluation resolution (paper: 256 Flickr30k, 384 RefCOCO+; default: the model config's)",
    )
    parser.add_argument(
        "--resize",
        nargs="+",
        choices=[AUTO, *EVAL_RESIZES],
        help="how images are resized to the square input, one for all splits or one per split "
        "(default auto: the benchmark's, as released: flickr30k cv2-linear = OpenCV bilinear without "
        "antialiasing; refcoco+ and others pil-bicubic)",
    )
    parser.add_argument(
        "--max-words", type=positive_int, help="words kept by pre_caption (default: per benchmark)"
    )
    parser.add_argument("--method", help="method name recorded in the summary")
    parser.add_argument("--seed", type=nonnegative_int, help="training seed recorded in the summary")
    parser.add_argument(
        "--explainer",
        action="append",
        metavar="NAME[:layer=K]",
        help="score this map instead of the paper's GradCAM (repeatable; all in one pass): gradcam, "
        "attention (raw cross-attention, no gradient), gradcam-mean (GradCAM averaged over the fusion "
        "layers), rollout (attention rollout through the fusion layers); gradcam and attention take "
        "layer=K, a fusion layer (default: the model config's gradcam_layer). One result per explainer "
        "and split: with several, each --out names the explainer as {explainer} (e.g. "
        "flickr30k-test-{explainer}.json -> flickr30k-test-gradcam-layer8.json)",
    )
    parser.add_argument("--proposals", help="detector proposals JSON for the optional box metric")
    parser.add_argument("--heatmaps", help="also save every grid-resolution heatmap to this .npz")
    parser.add_argument("--images-per-batch", type=positive_int, default=16)
    parser.add_argument("--phrases-per-batch", type=positive_int, default=64)
    parser.add_argument("--num-workers", type=nonnegative_int, default=2)
    parser.add_argument("--limit", type=positive_int, help="evaluate only the first N records (quick checks)")
    parser.add_argument(
        "--skip-missing-images", action="store_true", help="count missing or unreadable images as skipped"
    )
    parser.add_argument("--device", help="cpu, cuda (default: cuda when available)")


@dataclass
class SplitTask:
    """One benchmark split to evaluate: where its records are and where its result goes."""

    records: str
    benchmark: str
    split: str
    out: str
    image_res: int | None
    checkpoint: str
    resize: str | None = None  # None or "auto": the benchmark's

    @property
    def name(self) -> str:
        return f"{self.benchmark} {self.split}"

    @property
    def model_key(self) -> tuple[str, int | None]:
        """The model a split is evaluated with: its checkpoint at its input resolution."""
        return self.checkpoint, self.image_res


def split_tasks(args) -> list[SplitTask]:
    """Pair up the per-split arguments; a single --benchmark or --image-res applies to every split."""
    count = len(args.records)

    def per_split(name: str, values):
        if values is None:
            return [None] * count
        if len(values) == 1:
            return list(values) * count
        if len(values) != count:
            raise AmcError(
                f"--{name} has {len(values)} values for {count} --records (give one, or one per split)"
            )
        return list(values)

    for name in ("split", "out"):
        if len(getattr(args, name)) != count:
            raise AmcError(
                f"--{name} has {len(getattr(args, name))} values for {count} --records (one per split)"
            )
    if len(set(args.out)) != count:
        raise AmcError("--out: two splits would write the same file")
    if args.heatmaps and count > 1:
        raise AmcError("--heatmaps needs a single split")
    explainers = args.explainer or []
    if explainers and args.heatmaps:
        raise AmcError("--heatmaps saves the default GradCAM maps; it does not go with --explainer")
    if len(explainers) > 1:
        unnamed = [out for out in args.out if EXPLAINER_PLACEHOLDER not in out]
        if unnamed:
            raise AmcError(
                f"--out {unnamed[0]}: with several --explainer each --out names the explainer as "
                f"{EXPLAINER_PLACEHOLDER} (one result per explainer and split)"
            )
    benchmarks, resolutions = per_split("benchmark", args.benchmark), per_split("image-res", args.image_res)
    checkpoints, resizes = per_split("checkpoint", args.checkpoint), per_split("resize", args.resize)
    return [
        SplitTask(records, benchmark, split, out, res, checkpoint, resize)
        for records, benchmark, split, out, res, checkpoint, resize in zip(
            args.records, benchmarks, args.split, args.out, resolutions, checkpoints, resizes, strict=True
        )
    ]


def run(args) -> int:
    from amc.models.checkpoint import load_model_and_tokenizer

    tasks = split_tasks(args)
    # The explainers' syntax is checked before any work; their layers resolve on each model's configuration.
    for text in args.explainer or []:
        Explainer.parse(text)
    inputs = {
        **{f"--records ({task.name})": task.records for task in tasks},
        **{f"--checkpoint ({task.name})": task.checkpoint for task in tasks},
        "--model-config": args.model_config,
        "--vocab": args.vocab,
        "--proposals": args.proposals,
    }
    # Where the results go first (again below, once the explainers name the files), then the
    # inputs, then the (possibly long) work.
    check_outputs(
        {**{f"--out ({task.name})": task.out for task in tasks}, "--heatmaps": args.heatmaps}, inputs
    )
    default_device = "cuda" if torch.cuda.is_available() else "cpu"  # pragma: no mutate (device)
    device = torch.device(args.device or default_device)
    # Read every input before the first (possibly long) evaluation starts: each split's records and
    # prepare report, the proposals, and every checkpoint with its model configuration and vocabulary.
    splits = [_load_split(task, args) for task in tasks]
    checkpoints = dict.fromkeys(task.checkpoint for task in tasks)
    for path in checkpoints:
        if not Path(path).is_file():
            raise AmcError(f"{path}: checkpoint not found")
    sha256 = {path: sha256_file(path) for path in checkpoints}
    proposals = _load_proposals(args.proposals)
    bundles = {  # the model loads once for the splits that share it
        key: load_model_and_tokenizer(key[0], args.model_config, args.vocab, image_res=key[1])
        for key in dict.fromkeys(task.model_key for task in tasks)
    }
    # The explainers resolve on each model's configuration (a layer by default: its gradcam_layer).
    explainers = {
        key: parse_explainers(args.explainer, bundle.model.config) if args.explainer else None
        for key, bundle in bundles.items()
    }
    check_outputs(
        {
            f"--out ({task.name}, {explainer})": path
            for task in tasks
            for explainer, path in _outs(
                task, explainers[task.model_key], bundles[task.model_key].model
            ).items()
        },
        inputs,
    )
    for split in splits:
        key = split.task.model_key
        model = bundles[key].model.to(device).eval()  # pragma: no mutate (device)
        _evaluate_split(
            model,
            bundles[key].tokenizer,
            split,
            args,
            device,
            sha256[split.task.checkpoint],
            proposals,
            explainers[key],
        )
    return 0


@dataclass
class LoadedSplit:
    """A split's inputs, read and checked before any evaluation runs."""

    task: SplitTask
    records: list[Record]
    skipped: Counter  # cases left out so far, by reason
    prepare_report: dict | None  # amc prepare's report of the records (None: absent or stale)


def _load_split(task: SplitTask, args) -> LoadedSplit:
    records = load_records(task.records)
    prepare_report = read_prepare_report(task.records)
    if args.limit:
        records = records[: args.limit]
    records, skipped = check_images(records, args.skip_missing_images)
    if not records:
        raise DataError(f"{task.records}: no case left to evaluate")
    return LoadedSplit(task, records, skipped, prepare_report)


def _evaluate_split(
    model,
    tokenizer,
    split: LoadedSplit,
    args,
    device,
    checkpoint_sha256: str,
    proposals: dict[str, list],
    explainers: list[Explainer] | None = None,
) -> None:
    """One split: the paper's GradCAM map (``explainers`` None, the default), or one result per
    explainer (each written to ``task.out`` with ``{explainer}`` replaced by its slug)."""
    import numpy as np

    task, records = split.task, split.records

    inputs = EvalInputs.for_benchmark(
        task.benchmark, model.config.image_res, resize=task.resize, max_words=args.max_words
    )
    settings = dict(
        inputs=inputs,
        device=device,
        images_per_batch=args.images_per_batch,
        phrases_per_batch=args.phrases_per_batch,
        num_workers=args.num_workers,
        proposals=proposals,
    )
    if explainers is None:
        heatmaps: dict[str, np.ndarray] = {}
        cases, more_skipped = evaluate(
            model,
            tokenizer,
            records,
            **settings,
            on_heatmap=(lambda r, h: heatmaps.__setitem__(r.id, h.numpy())) if args.heatmaps else None,
        )
        results = {Explainer(GRADCAM, model.gradcam_layer): cases}
    else:
        results, more_skipped = evaluate_explainers(model, tokenizer, records, explainers, **settings)
    skipped = split.skipped + more_skipped
    if not all(results.values()):
        raise DataError(
            f"{task.records}: no case was evaluated (skipped: {dict(skipped)}); no result is written"
        )
    outs = _outs(task, explainers, model)
    written = {  # every result checked as its readers will check it, before the first is written
        explainer: validate_result(
            EvaluationResult(
                _summary(split, cases, skipped, inputs, model, args, device, checkpoint_sha256, explainer),
                cases,
            ).to_dict(),
            outs[explainer],
        )
        for explainer, cases in results.items()
    }
    if explainers is None and args.heatmaps:
        from amc.io import atomic_write

        with atomic_write(args.heatmaps, "wb") as handle:
            np.savez_compressed(handle, **heatmaps)
    for explainer, result in written.items():
        atomic_write_json(outs[explainer], result, indent=None)
        summary = result["summary"]
        log.info(
            "%s %s, %s: pointing accuracy %.2f%%, energy in the boxes %.3f, on %d cases (%d skipped) -> %s",
            task.benchmark,
            task.split,
            explainer,
            100 * summary["accuracy"],
            summary["energy"],
            summary["n_cases"],
            sum(skipped.values()),
            outs[explainer],
        )


def _outs(task: SplitTask, explainers: list[Explainer] | None, model) -> dict[Explainer, str]:
    """Where each explainer's result of ``task`` goes (the paper's GradCAM alone: ``--out`` itself)."""
    if explainers is None:
        return {Explainer(GRADCAM, model.gradcam_layer): task.out}
    return {explainer: explainer_out(task.out, explainer) for explainer in explainers}


def _summary(
    split: LoadedSplit, cases, skipped, inputs, model, args, device, checkpoint_sha256, explainer: Explainer
) -> dict:
    task = split.task
    hits = sum(c.hit for c in cases)
    summary = {
        "benchmark": task.benchmark,
        "split": task.split,
        "method": args.method,
        "seed": args.seed,
        "accuracy": hits / len(cases),
        "n_cases": len(cases),
        "n_hits": hits,
        "skipped": dict(skipped),
        # what amc prepare left out of the records, by reason (None: unknown, see the log)
        "skipped_in_prepare": split.prepare_report,
        "misses": dict(Counter(c.miss for c in cases if c.miss)),
        "image_res": inputs.image_res,
        "resize": inputs.resize,
        "max_words": inputs.max_words,
        "records": str(task.records),
        "checkpoint": str(task.checkpoint),
        "checkpoint_sha256": checkpoint_sha256,
        "model_config": model.config.to_dict(),
        "code_version": _code_version(),
        "device": str(device),
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    if args.proposals:
        summary["box_accuracy"] = sum(bool(c.box_hit) for c in cases) / len(cases)
    summary.update(energy_summary(cases))
    summary["explainer"] = explainer.to_dict()
    return summary


def energy_summary(cases: list[CaseResult]) -> dict:
    """``energy``: the mean energy in the boxes over all cases, a map without positive mass
    counting 0 (none of it is in the boxes); ``energy_undefined``: how many such maps."""
    undefined = sum(c.energy is None for c in cases)
    total = sum(c.energy for c in cases if c.energy is not None)
    return {"energy": total / len(cases) if cases else 0.0, "energy_undefined": undefined}


EXPLAINER_PLACEHOLDER = "{explainer}"


def explainer_out(out: str, explainer: Explainer) -> str:
    """``out`` with ``{explainer}`` replaced by the explainer's slug (``gradcam-layer8``, ``rollout``)."""
    return out.replace(EXPLAINER_PLACEHOLDER, explainer.slug)
