"""Figures (PNG + PDF) from ``results/<run>/``: Δ sweeps, training curves, errors, qualitative grid.

Every function takes data already loaded (by :mod:`amc.report.tables`) and a path
stem; it writes ``stem.png`` and ``stem.pdf``. A figure with nothing to show says
so in its panel rather than being left out, so the workflow's outputs are fixed.
"""

from __future__ import annotations

import hashlib
import logging
import sys
import tempfile
from pathlib import Path

import matplotlib

if "ipykernel" not in sys.modules:  # in a notebook its inline backend stays, so plt.show() draws
    matplotlib.use("Agg")  # files only, also on machines without a display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from amc.grid import TRAIN_METRICS_GLOB  # noqa: E402
from amc.io import atomic_write_bytes, read_append_log  # noqa: E402
from amc.records import Record  # noqa: E402
from amc.report.tables import EvalRun  # noqa: E402

log = logging.getLogger(__name__)


def save(fig: plt.Figure, stem: str | Path) -> list[Path]:
    """Write ``stem.png`` (150 dpi) and ``stem.pdf`` atomically; close the figure."""
    stem = Path(stem)
    paths = []
    for ext, kwargs in (("png", {"dpi": 150}), ("pdf", {})):
        path = stem.with_suffix(f".{ext}")
        with tempfile.TemporaryFile() as buffer:
            fig.savefig(buffer, format=ext, bbox_inches="tight", **kwargs)
            buffer.seek(0)
            atomic_write_bytes(path, buffer.read())
        paths.append(path)
    plt.close(fig)
    return paths


def _empty(ax: plt.Axes, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=11, color="0.4")
    ax.set_axis_off()


# ------------------------------------------------------------------ ablation over Δ values


def ablation_delta(ablation: pd.DataFrame, sweep_axes: list[dict], stem: str | Path) -> list[Path]:
    """Accuracy (with its 95% interval) against each swept value, one panel per sweep, one line per split."""
    sns.set_theme(style="whitegrid", context="paper")
    n = max(1, len(sweep_axes))
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 3.4), squeeze=False)
    if not sweep_axes:
        _empty(axes[0][0], "no sweep in this run's configuration")
        return save(fig, stem)
    for ax, sweep in zip(axes[0], sweep_axes, strict=True):
        points = []
        for point in sweep["points"]:
            rows = ablation[ablation["method"] == point["method"]]
            for _, row in rows.iterrows():
                points.append(
                    {
                        "value": float(point["value"]),
                        "split": f"{row['benchmark']} {row['split']}",
                        "accuracy": row["accuracy"],
                        "low": row["low"],
                        "high": row["high"],
                    }
                )
        frame = pd.DataFrame(points)
        if frame.empty:
            _empty(ax, f"no results for the {sweep['symbol']} sweep")
            continue
        palette = dict(
            zip(
                sorted(frame["split"].unique()),
                sns.color_palette(n_colors=frame["split"].nunique()),
                strict=True,
            )
        )
        for split, group in frame.groupby("split"):
            group = group.sort_values("value")
            ax.errorbar(
                group["value"],
                group["accuracy"],
                yerr=[group["accuracy"] - group["low"], group["high"] - group["accuracy"]],
                marker="o",
                capsize=3,
                label=split,
                color=palette[split],
            )
        ax.set_xlabel(f"{sweep['symbol']} ({sweep['parameter'].rsplit('.', 1)[-1]})")
        ax.set_ylabel("pointing accuracy (%)")
        ax.set_title(f"{sweep['base']}: sweep of {sweep['symbol']}")
        ax.set_xticks(sorted(frame["value"].unique()))
        ax.legend(fontsize=7)
    fig.tight_layout()
    return save(fig, stem)


# ------------------------------------------------------------------ training curves


def load_metrics(run_dir: str | Path) -> pd.DataFrame:
    """Every ``train/<method>/seed<k>/metrics.jsonl`` as one long frame (method, seed, step, ...)."""
    frames = []
    for path in sorted(Path(run_dir).glob(TRAIN_METRICS_GLOB)):
        seed = path.parent.name.removeprefix("seed")
        rows = read_append_log(path)  # a run still going (or killed) may have a torn last line
        if not rows or not seed.isdigit():
            continue
        frame = pd.DataFrame(rows)
        frame.insert(0, "seed", int(seed))
        frame.insert(0, "method", path.parent.parent.name)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


LOSS_ORDER = ["loss", "loss_itc", "loss_itm", "loss_mlm", "loss_amc", "l_mean", "l_max"]


def training_curves(metrics: pd.DataFrame, labels: dict[str, str], stem: str | Path) -> list[Path]:
    """Loss terms against step, one panel per term, one line per method (band: spread over seeds)."""
    sns.set_theme(style="whitegrid", context="paper")
    if metrics.empty or "step" not in metrics:
        fig, ax = plt.subplots(figsize=(5, 3))
        _empty(ax, "no training metrics in this run")
        return save(fig, stem)
    terms = [t for t in LOSS_ORDER if t in metrics and metrics[t].notna().any()]
    terms += sorted(
        c for c in metrics.columns if c.startswith("loss_") and c not in terms and metrics[c].notna().any()
    )
    long = metrics.melt(
        id_vars=["method", "seed", "step"], value_vars=terms, var_name="term", value_name="value"
    )
    long = long.dropna(subset=["value"])
    long["method"] = long["method"].map(lambda m: labels.get(m, m))
    grid = sns.relplot(
        data=long,
        x="step",
        y="value",
        hue="method",
        col="term",
        col_wrap=min(4, len(terms)),
        kind="line",
        errorbar=("pi", 100),
        facet_kws={"sharey": False},
        height=2.6,
        aspect=1.3,
    )
    grid.set_titles("{col_name}")
    return save(grid.figure, stem)


# ------------------------------------------------------------------ error decomposition


def error_decomposition(ablation: pd.DataFrame, stem: str | Path) -> list[Path]:
    """Per method and split: share of cases hit, missed on another object, missed on the background."""
    sns.set_theme(style="whitegrid", context="paper")
    if ablation.empty:
        fig, ax = plt.subplots(figsize=(5, 3))
        _empty(ax, "no evaluation results in this run")
        return save(fig, stem)
    splits = list(
        dict.fromkeys(f"{b} {s}" for b, s in zip(ablation["benchmark"], ablation["split"], strict=True))
    )
    labels = list(dict.fromkeys(ablation["label"]))
    fig, axes = plt.subplots(
        1,
        len(splits),
        figsize=(3.2 * len(splits) + 1.5, 0.32 * len(labels) + 1.6),
        squeeze=False,
        sharey=True,
    )
    colours = {"hit": "#4c9a5b", "other object": "#e0a03a", "background": "#c0504d"}
    for ax, split in zip(axes[0], splits, strict=True):
        part = ablation[(ablation["benchmark"] + " " + ablation["split"]) == split].set_index("label")
        part = part.reindex(labels)
        hit = part["accuracy"].fillna(0)
        other = 100 * part["other_object_rate"].fillna(0)
        background = 100 * part["background_rate"].fillna(0)
        y = np.arange(len(labels))
        ax.barh(y, hit, color=colours["hit"], label="hit")
        ax.barh(y, other, left=hit, color=colours["other object"], label="miss: other object")
        ax.barh(y, background, left=hit + other, color=colours["background"], label="miss: background")
        ax.set_yticks(y, labels)
        ax.invert_yaxis()
        ax.set_xlim(0, 100)
        ax.set_xlabel("% of cases")
        ax.set_title(split)
    axes[0][-1].legend(loc="lower right", fontsize=7, framealpha=0.9)
    fig.tight_layout()
    return save(fig, stem)


# ------------------------------------------------------------------ qualitative grid


def choose_examples(runs: dict[str, EvalRun], count: int, prefer: str | None = None) -> list[str]:
    """Deterministic example case ids: first cases where the methods disagree.

    Order: disagreements where ``prefer`` (the reference) hits, then other
    disagreements, then the rest; within each group by a hash of the id, so the
    choice is stable and spread over the split rather than its first images.
    """
    frames = {m: r.cases.set_index("id")["hit"] for m, r in runs.items()}
    ids = sorted(set.intersection(*(set(f.index) for f in frames.values()))) if frames else []

    def key(case_id: str) -> tuple[int, str]:
        hits = [bool(frames[m].loc[case_id]) for m in frames]
        disagree = len(set(hits)) > 1
        preferred = prefer in frames and bool(frames[prefer].loc[case_id])
        group = 0 if disagree and preferred else 1 if disagree else 2
        return group, hashlib.sha1(case_id.encode()).hexdigest()

    return sorted(ids, key=key)[:count]


def method_heatmaps(
    checkpoint: str,
    records: list[Record],
    *,
    benchmark: str,
    image_res: int,
    resize: str | None = None,
    model_config: str | None = None,
    vocab: str | None = None,
) -> dict[str, np.ndarray]:
    """The grid-resolution GradCAM map of each record (by id), in this process: the model loads once
    and the maps come from ``amc evaluate``'s own loop with ``benchmark``'s inputs
    (:class:`amc.evaluate.EvalInputs`; ``resize`` overrides), so they are the maps it scored."""
    import torch

    from amc.evaluate import EvalInputs, evaluate
    from amc.models.checkpoint import load_model_and_tokenizer

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    bundle = load_model_and_tokenizer(checkpoint, model_config, vocab, image_res=image_res)
    heatmaps: dict[str, np.ndarray] = {}
    evaluate(
        bundle.model.to(device),
        bundle.tokenizer,
        records,
        inputs=EvalInputs.for_benchmark(benchmark, image_res, resize=resize),
        device=device,
        num_workers=0,
        on_heatmap=lambda record, heatmap: heatmaps.__setitem__(record.id, heatmap.numpy()),
    )
    return heatmaps


def qualitative_grid(examples: list[dict], methods: list[tuple[str, str]], stem: str | Path) -> list[Path]:
    """Rows: examples (image, phrase, ground-truth box); columns: methods (heatmap + point).

    ``examples``: dicts with image, phrase, boxes, width, height and per method
    ``heatmaps[method]`` (array or None) and ``points[method]`` ((x, y), hit).
    """
    import torch
    from PIL import Image

    from amc.metrics import upsample_heatmap

    sns.set_theme(style="white", context="paper")
    if not examples:
        fig, ax = plt.subplots(figsize=(5, 3))
        _empty(ax, "no examples to show")
        return save(fig, stem)
    n_rows, n_cols = len(examples), len(methods) + 1
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(2.3 * n_cols, 2.5 * n_rows), squeeze=False)
    for r, example in enumerate(examples):
        with Image.open(example["image"]) as handle:
            image = np.asarray(handle.convert("RGB"))
        height, width = image.shape[:2]
        for c in range(n_cols):
            ax = axes[r][c]
            ax.imshow(image)
            for x1, y1, x2, y2 in example["boxes"]:
                ax.add_patch(
                    plt.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor="#39ff14", linewidth=1.5)
                )
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                phrase = example["phrase"] if len(example["phrase"]) <= 40 else example["phrase"][:37] + "..."
                ax.set_title(f'"{phrase}"', fontsize=8)
                continue
            method, label = methods[c - 1]
            heatmap = example["heatmaps"].get(method)
            if heatmap is not None:
                full = upsample_heatmap(torch.as_tensor(heatmap), height, width).numpy()  # as evaluated
                ax.imshow(full, cmap="jet", alpha=0.45, extent=(0, width, height, 0))
            point = example["points"].get(method)
            if point is not None:
                (x, y), hit = point
                ax.plot(
                    [x],
                    [y],
                    marker="*",
                    markersize=13,
                    color="white" if hit else "red",
                    markeredgecolor="black",
                )
            if r == 0:
                ax.set_title(label, fontsize=9, fontweight="bold")
    fig.suptitle(
        "green: ground-truth box(es); star: predicted point (white = hit, red = miss)", fontsize=8, y=1.0
    )
    fig.tight_layout()
    return save(fig, stem)


# ------------------------------------------------------------------ the explainer ablation


def explainer_layers(frame: pd.DataFrame, stem: str | Path, trained_layer: int | None = None) -> list[Path]:
    """GradCAM's pointing accuracy (top row) and energy in the boxes (bottom row) against the fusion
    layer it is taken from, one line per method, one column per split (bars: 95% intervals).
    ``trained_layer``: the layer AMC trains (the model's gradcam_layer), marked."""
    sns.set_theme(style="whitegrid", context="paper")
    layers = frame[frame["explainer_name"] == "gradcam"] if not frame.empty else frame
    if layers.empty:
        fig, ax = plt.subplots(figsize=(5, 3))
        _empty(ax, "no GradCAM-per-layer results in this run")
        return save(fig, stem)
    splits = list(
        dict.fromkeys(f"{b} {s}" for b, s in zip(layers["benchmark"], layers["split"], strict=True))
    )
    labels = list(dict.fromkeys(layers["label"]))
    palette = dict(zip(labels, sns.color_palette(n_colors=len(labels)), strict=True))
    fig, axes = plt.subplots(
        2, len(splits), figsize=(3.6 * len(splits) + 1.0, 5.6), squeeze=False, sharex=True
    )
    for column, split in enumerate(splits):
        part = layers[(layers["benchmark"] + " " + layers["split"]) == split]
        offset = 0.05 * max(1.0, float(part["layer"].max() - part["layer"].min()))  # lines side by side
        for row, (metric, low, high, name) in enumerate(
            (
                ("accuracy", "low", "high", "pointing accuracy (%)"),
                ("energy", "energy_low", "energy_high", "energy in the boxes (%)"),
            )
        ):
            ax = axes[row][column]
            for number, (label, group) in enumerate(part.groupby("label", sort=False)):
                group = group.sort_values("layer")
                ax.errorbar(
                    group["layer"] + (number - (len(labels) - 1) / 2) * offset,
                    group[metric],
                    yerr=[group[metric] - group[low], group[high] - group[metric]],
                    marker="o",
                    capsize=3,
                    label=label,
                    color=palette[label],
                )
            if trained_layer is not None:
                ax.axvline(trained_layer, color="0.5", linestyle="--", linewidth=1)
            ax.set_xticks(sorted(part["layer"].unique().astype(int)))
            ax.set_ylabel(name)
            if row == 0:
                ax.set_title(split)
            else:
                ax.set_xlabel("fusion layer of GradCAM (dashed: the layer AMC trains)")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    return save(fig, stem)
