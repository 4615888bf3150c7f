"""``amc bench``'s command line: options to :class:`~amc.bench.settings.BenchSettings`, the run, the JSON and the table."""

from __future__ import annotations

import logging
import shlex
import sys
from pathlib import Path

import torch

from amc.bench.runner import run_bench
from amc.bench.settings import (
    DEFAULT_CPU_CONFIG,
    DEFAULT_GPU_CONFIG,
    DEFAULT_PEAK_TFLOPS_CUDA,
    MEASUREMENTS,
    PATHS,
    BenchSettings,
)
from amc.bench.tables import to_markdown
from amc.cli import nonnegative_int, positive_float, positive_int
from amc.io import AmcError, atomic_write_json, atomic_write_text, check_outputs

log = logging.getLogger(__name__)


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
