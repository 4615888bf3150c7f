"""``amc synth``: every format written into a temporary folder, moved into place when complete; the command line."""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import time
from dataclasses import asdict
from pathlib import Path

from amc.cli import nonnegative_int, positive_int
from amc.io import AmcError, check_outputs
from amc.synth.captions import write_captions
from amc.synth.flickr30k import write_flickr30k
from amc.synth.language import RELATIONS, vocabulary_lines, vocabulary_words
from amc.synth.output import SynthOutput
from amc.synth.refcoco import REFCOCO_GROUP_A, REFCOCO_GROUP_B, write_refcoco
from amc.synth.scale import SCALES, SynthScale
from amc.synth.scene import COLOURS, SHAPES, SIZE_FRACTIONS
from amc.synth.vg import write_vg

log = logging.getLogger(__name__)


def generate(out: str | os.PathLike, seed: int, scale: str | SynthScale = "ci", workers: int = 2) -> dict:
    """Write the synthetic benchmark to ``out`` (replacing an earlier one); returns SYNTH_INFO.

    ``workers`` processes draw the images; the output does not depend on it.
    """
    scale_name, params = (scale, SCALES[scale]) if isinstance(scale, str) else ("custom", scale)
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not (out / "SYNTH_INFO.json").is_file():
        raise AmcError(f"{out}: exists, is not empty and holds no SYNTH_INFO.json; refusing to overwrite it")
    partial = out.parent / f".{out.name}.partial"
    if partial.exists():
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    started = time.monotonic()
    output = SynthOutput(partial, seed, params)
    refcoco_ids = write_refcoco(output)
    flickr_ids = write_flickr30k(output)
    write_vg(output, refcoco_ids, flickr_ids)
    write_captions(output)
    vocab = vocabulary_lines()
    output.write_text("vocab/vocab.txt", "\n".join(vocab) + "\n")
    output.render_all(workers)
    output.counts.update(images=len(output.jobs), vocab_words=len(vocabulary_words()))
    info = {
        "seed": seed,
        "scale": scale_name,
        "parameters": asdict(params),
        "counts": output.counts,
        "world": {
            "shapes": list(SHAPES),
            "colours": COLOURS,
            "sizes": {k: list(v) for k, v in SIZE_FRACTIONS.items()},
            "relations": list(RELATIONS),
            "refcoco_testA_shapes": list(REFCOCO_GROUP_A),
            "refcoco_testB_shapes": list(REFCOCO_GROUP_B),
        },
        "layout": {
            "vg": "vg/{image_data,region_descriptions,attributes,relationships}.json, vg/VG_100K/<image_id>.jpg",
            "vg_released": "amc/{vg_descriptions,vg_attributes_spatial,vg_attributes}.json (images under vg/)",
            "flickr30k": "flickr30k/{Sentences,Annotations}/<id>.{txt,xml}, flickr30k/{train,val,test}.txt, flickr30k/flickr30k-images/<id>.jpg",
            "refcoco+": "refcoco+/refs(unc).p, refcoco+/instances.json, coco/train2014/COCO_train2014_<12-digit id>.jpg",
            "captions": "captions/pretrain.json, captions/images/<n>.jpg",
            "vocab": "vocab/vocab.txt",
        },
    }
    output.write_json("SYNTH_INFO.json", info, indent=2)  # last: its presence means complete
    if out.exists():
        shutil.rmtree(out)
    os.replace(partial, out)
    log.info(
        "synth: %d images, scale %s, seed %d, %.1f s -> %s",
        len(output.jobs),
        scale_name,
        seed,
        time.monotonic() - started,
        out,
    )
    return info


# ---------------------------------------------------------------------------------------------
# CLI.


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="output folder (replaced if it holds an earlier synth)")
    parser.add_argument("--seed", type=nonnegative_int, required=True)
    parser.add_argument(
        "--scale", choices=sorted(SCALES), default="demo", help="how much to generate (default: demo)"
    )
    parser.add_argument(
        "--workers",
        type=positive_int,
        default=2,
        help="processes drawing images (output does not depend on it)",
    )


def run(args: argparse.Namespace) -> int:
    check_outputs({}, folders={"--out": args.out})
    generate(args.out, args.seed, args.scale, workers=args.workers)
    return 0
