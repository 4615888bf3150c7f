"""``amc gradcam``: the evaluation-recipe GradCAM map of one image and one text.

The image and the text go in as ``amc evaluate`` takes them for ``--benchmark``
(:class:`amc.evaluate.EvalInputs`: the benchmark's resize and word limit, no token cap).
Writes the map at grid resolution (float32 [h, w], ``.npy``); with ``--overlay`` also the
image with the map upsampled bicubically to the original size and the predicted point (the
first maximum in row-major order) drawn on it. ALBEF-layout checkpoints (ALBEF.pth,
refcoco.pth, AMC's) load directly, with ``--model-config`` and ``--vocab``; this project's own
checkpoints carry both.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from amc.cli import positive_int
from amc.io import AmcError, atomic_write, check_outputs

log = logging.getLogger(__name__)


def configure_parser(parser: argparse.ArgumentParser) -> None:
    from amc.data.transforms import EVAL_RESIZES
    from amc.evaluate import AUTO

    parser.add_argument(
        "--model-config",
        help="model config (YAML/JSON), e.g. config/models/albef-base.yaml; default: the one saved in "
        "this project's checkpoints (ALBEF.pth and the released checkpoints carry none: give it)",
    )
    parser.add_argument(
        "--checkpoint", required=True, help="ALBEF.pth, refcoco.pth, an AMC or amc-bench checkpoint"
    )
    parser.add_argument(
        "--vocab",
        help="vocab.txt or a folder holding it; default: the vocabulary saved in this project's checkpoints",
    )
    parser.add_argument("--image", required=True, help="image file")
    parser.add_argument(
        "--text",
        required=True,
        help="the phrase (cleaned with ALBEF's pre_caption, the benchmark's word limit)",
    )
    parser.add_argument(
        "--benchmark",
        default=None,
        help="prepare image and text as amc evaluate does for this benchmark (flickr30k, refcoco+); "
        "default: the defaults for other benchmarks (pil-bicubic, 30 words)",
    )
    parser.add_argument(
        "--resize",
        choices=[AUTO, *EVAL_RESIZES],
        default=None,
        help="override the benchmark's image resize (auto: the benchmark's)",
    )
    parser.add_argument(
        "--image-res", type=positive_int, default=None, help="input resolution (default: the config's)"
    )
    parser.add_argument("--output", required=True, help="heatmap at grid resolution, float32 [h, w] .npy")
    parser.add_argument("--overlay", default=None, help="also write the image with heatmap and point (PNG)")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")


def load_image(path: str | Path, inputs):
    """The image as read (for the overlay) and its evaluation transform (``inputs``: an
    :class:`amc.evaluate.EvalInputs`, the same as ``amc evaluate``)."""
    from amc.data.images import load_image as read_rgb

    image = read_rgb(path, "--image")
    return image, inputs.transform()(image)


def run(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from amc.evaluate import EvalInputs
    from amc.gradcam import gradcam_eval
    from amc.metrics import argmax_point, upsample_heatmap
    from amc.models.checkpoint import load_model_and_tokenizer

    check_outputs(
        {"--output": args.output, "--overlay": args.overlay},
        {
            "--image": args.image,
            "--checkpoint": args.checkpoint,
            "--model-config": args.model_config,
            "--vocab": args.vocab,
        },
    )
    bundle = load_model_and_tokenizer(
        args.checkpoint, args.model_config, args.vocab, image_res=args.image_res
    )
    model, tokenizer, config = bundle.model, bundle.tokenizer, bundle.model.config
    inputs = EvalInputs.for_benchmark(args.benchmark, config.image_res, resize=args.resize)
    text = inputs.text(args.text)
    if not text:
        raise AmcError("--text is empty after cleaning")
    tokens = inputs.tokens(tokenizer, [text], config.text.max_position_embeddings)
    original, pixels = load_image(args.image, inputs)

    device = torch.device(args.device)
    model = model.to(device).eval()
    tokens = tokens.to(device)
    with torch.no_grad():
        image_embeds = model.encode_image(pixels[None].to(device))
    cam = gradcam_eval(model, image_embeds, tokens.input_ids, tokens.attention_mask)[0].float().cpu()

    heat = cam.numpy().astype(np.float32)
    with atomic_write(args.output, "wb") as handle:
        np.save(handle, heat)
    log.info("%s: %dx%d GradCAM map for %r", args.output, *heat.shape, text)

    if args.overlay:
        width, height = original.size
        full = upsample_heatmap(cam, height, width)
        point = argmax_point(full)  # the point `amc evaluate` scores
        write_overlay(args.overlay, original, full.numpy(), point, text)
        log.info("%s: overlay, point (x=%d, y=%d)", args.overlay, *point)
    return 0


def write_overlay(path: str | Path, image, heat, point: tuple[int, int], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    width, height = image.size
    dpi = 100
    fig = plt.figure(figsize=(max(width, 64) / dpi, max(height, 64) / dpi + 0.3), dpi=dpi)
    ax = fig.add_axes((0, 0, 1, height / (height + 30)))
    ax.imshow(image)
    ax.imshow(heat, cmap="jet", alpha=0.5, extent=(-0.5, width - 0.5, height - 0.5, -0.5))
    ax.plot([point[0]], [point[1]], marker="*", color="white", markeredgecolor="black", markersize=14)
    ax.set_axis_off()
    fig.suptitle(title, fontsize=8, y=0.995)
    with atomic_write(path, "wb") as handle:
        fig.savefig(handle, format=Path(path).suffix.lstrip(".") or "png")
    plt.close(fig)
