"""The ``amc`` command: one subcommand per module, imported only when used.

Each module listed in :data:`COMMANDS` exposes ``configure_parser(parser)`` and
``run(args) -> int``. Keeping the imports lazy makes ``amc --help`` instant and
lets a subcommand's heavy dependencies (torch, snakemake) load only when needed.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import math
import sys

from amc.io import AmcError

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "synth": ("amc.synth", "generate the synthetic grounding benchmark in the real datasets' raw formats"),
    "prepare": (
        "amc.data.prepare",
        "read a raw dataset (vg, flickr30k, refcoco+) into grounding records (JSONL)",
    ),
    "pretrain": ("amc.train", "pretrain an ALBEF-shaped model from random weights (the demo's ALBEF.pth)"),
    "train": ("amc.train", "fine-tune a method (AMC, its ablations, baselines) from a checkpoint"),
    "evaluate": ("amc.evaluate", "pointing accuracy of a checkpoint on grounding records"),
    "gradcam": ("amc.gradcam_cli", "one GradCAM heatmap (and overlay) for an image and a text"),
    "download": ("amc.download", "download and verify datasets and checkpoints from the manifest"),
    "convert-checkpoint": (
        "amc.checkpoint_cli",
        "rewrite a checkpoint the safe loader refuses as plain data (--trust: unpickles it once)",
    ),
    "export-checkpoint": (
        "amc.checkpoint_cli",
        "write a checkpoint in another layout (amc-released: the AMC authors' best_*.pth layout)",
    ),
    "report": ("amc.report.cli", "tables (Table 1, ablation) and figures from results/<run>"),
    "bench": ("amc.bench", "measure training and evaluation throughput against the released code's path"),
    "gpu-run": ("amc.gpu", "run a command on a free GPU (one lock per device)"),
}


# ------------------------------------------------------------------ range-checked flag types
# Every number a flag takes is checked where it enters: `--limit -1` is an error, not a silent
# slice that drops a case.


def _number(text: str, kind: type, minimum: float, what: str):
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
    if not math.isfinite(value) or value < minimum:
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}")
    return value


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1."""
    return _number(text, int, 1, "a whole number >= 1")


def nonnegative_int(text: str) -> int:
    """An argparse type: an integer >= 0."""
    return _number(text, int, 0, "a whole number >= 0")


def positive_float(text: str) -> float:
    """An argparse type: a finite number > 0."""
    value = _number(text, float, 0.0, "a finite number > 0")
    if value == 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number > 0")
    return value


def nonnegative_float(text: str) -> float:
    """An argparse type: a finite number >= 0."""
    return _number(text, float, 0.0, "a finite number >= 0")


def error_message(error: AmcError) -> str:
    """The message of an AmcError, also when a DataLoader worker raised it.

    torch re-raises a worker's exception in the main process as the same type, built from one
    long text: "Caught DataError in DataLoader worker process 0. Original Traceback ...", ending
    with "amc.io.DataError: <message>". The person needs only that message.
    """
    text = str(error)
    if not text.startswith("Caught ") or "Original Traceback" not in text:
        return text
    kind = type(error)
    for prefix in (f"{kind.__module__}.{kind.__qualname__}: ", f"{kind.__qualname__}: "):
        if prefix in text:
            return text.rsplit(prefix, 1)[1].strip()
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="amc",
        description="AMC benchmark suite: Attention Map Consistency for visual grounding on ALBEF.",
        epilog="`amc COMMAND --help` explains a command. README.md and docs/ explain the suite.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_module, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    top = build_parser()
    # Parse only the global options and the command name; the command parses the rest.
    global_args, rest = top.parse_known_args(argv)
    if global_args.command is None:
        top.print_help()
        return 0
    logging.basicConfig(
        level=logging.DEBUG if global_args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    module_name, help_text = COMMANDS[global_args.command]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"amc {global_args.command}", description=help_text)
    module.configure_parser(parser)
    args = parser.parse_args(rest)
    args.command = global_args.command  # lets one module serve two commands (pretrain, train)
    try:
        return int(module.run(args) or 0)
    except AmcError as error:
        logging.getLogger("amc").error("%s", error_message(error))
        return 2
