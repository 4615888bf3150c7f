"""``amc convert-checkpoint`` and ``amc export-checkpoint``: checkpoint files for other commands.

    amc convert-checkpoint SRC DST [--trust]
        A file the safe loader (torch.load weights_only=True) refuses, rewritten once as plain
        data that every command loads. SRC is unpickled in full only with --trust.

    amc export-checkpoint SRC DST --layout amc-released|albef [--model-config CFG] [--epoch N]
        A model in another layout: ``amc-released`` is the AMC-grounding checkpoint layout
        (best_flickr.pth, ...), ``albef`` ALBEF.pth's. SRC is any checkpoint that loads for
        training (a project checkpoint carries its model config).

docs/model.md explains the layouts and the risk --trust accepts.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from amc.cli import nonnegative_int
from amc.io import AmcError, check_outputs

log = logging.getLogger(__name__)

LAYOUTS = ("amc-released", "albef")


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", type=Path, help="the checkpoint to read")
    parser.add_argument("dst", type=Path, help="the file to write (never SRC itself)")
    if parser.prog.endswith("convert-checkpoint"):
        parser.add_argument(
            "--trust",
            action="store_true",
            help="unpickle SRC in full although a pickle can run arbitrary code (only for files you trust)",
        )
    else:
        parser.add_argument("--layout", required=True, choices=LAYOUTS, help="the layout to write")
        parser.add_argument("--model-config", help="model config YAML, for a SRC that carries none")
        parser.add_argument(
            "--epoch", type=nonnegative_int, help="the epoch recorded in the file (default: SRC's, if any)"
        )


def run(args: argparse.Namespace) -> int:
    check_outputs({"DST": args.dst}, {"SRC": args.src, "--model-config": getattr(args, "model_config", None)})
    if args.command == "convert-checkpoint":
        from amc.models.checkpoint import convert_checkpoint

        result = convert_checkpoint(args.src, args.dst, trust=args.trust)
        if result.dropped:
            log.warning("%d value(s) were not plain data and were left out", len(result.dropped))
        return 0
    return export(args)


def export(args: argparse.Namespace) -> int:
    from amc.models.checkpoint import (
        export_albef,
        export_amc_released,
        load_model,
        read_checkpoint,
        save_torch_file,
    )
    from amc.models.config import ModelConfig

    if args.dst.resolve() == args.src.resolve():
        raise AmcError(f"{args.dst}: the exported file must not replace its source; name another path")
    source = read_checkpoint(args.src)
    model_config = ModelConfig.from_file(args.model_config) if args.model_config else None
    model = load_model(args.src, model_config, purpose="train")  # every key: the file is complete
    if args.layout == "albef":
        exported = export_albef(model)
    else:
        epoch = args.epoch if args.epoch is not None else source.extra.get("epoch")
        exported = export_amc_released(
            model,
            # released files hold their training configuration; ours is the run config
            config=source.extra.get("run_config") or {"model_config": model.config.to_dict()},
            epoch=epoch if isinstance(epoch, int) else None,
            optimizer=source.extra.get("optimizer"),
            lr_scheduler=source.extra.get("scheduler"),
        )
    save_torch_file(args.dst, exported)
    log.info("%s -> %s (%s layout: %s)", args.src, args.dst, args.layout, ", ".join(exported))
    return 0
