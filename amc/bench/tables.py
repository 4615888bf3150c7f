"""The markdown table of an ``amc bench`` report."""

from __future__ import annotations

from amc.bench.equivalence import MIN_CORRELATION, MIN_SAME_POINTS
from amc.bench.measure import EvalMeasurement, TrainMeasurement
from amc.bench.paths import PathSpec
from amc.bench.runner import BenchReport


def _memory_cell(m: TrainMeasurement | EvalMeasurement) -> str:
    if m.tensor_memory_mib is None:
        return _fmt(m.peak_memory_mib / 2**10, 2)
    return f"{_fmt(m.tensor_memory_mib)} (RSS +{_fmt(m.peak_memory_mib)})"


def _fmt(value: float | None, digits: int = 1) -> str:
    if value is None:
        return "–"
    if value != 0 and abs(value) < 10 ** (-digits):
        return f"{value:.2g}"
    return f"{value:,.{digits}f}"


def to_markdown(report: BenchReport) -> str:
    meta, settings = report.meta, report.settings
    memory_header = "memory (MiB): tensors (RSS growth)" if meta["device"] == "cpu" else "peak memory (GiB)"
    lines = [
        "# amc bench",
        "",
        f"- card: {meta['card']} ({meta['device']}; torch {meta['torch']}"
        + (f", CUDA {meta['cuda']}" if meta.get("cuda") else f", {meta['cpu_threads']} threads")
        + ")",
        f"- command: `{meta['command']}`",
        f"- the same, every setting spelled out: `{meta['equivalent_command']}`",
        f"- model: `{meta['model_config']}` ({meta['parameters']:,} parameters with the momentum copies), "
        f"GradCAM layer {meta['gradcam_layer']}, text length {settings['text_len']}",
        f"- created {meta['created']}; load average at start {meta['load_average_start']}, "
        f"at end {meta.get('load_average_end')}",
    ]
    if meta.get("peak_tflops"):
        lines.append(f"- MFU against a peak of {meta['peak_tflops']:g} TFLOP/s")
    paths = {p.name: p for p in report.paths}
    if report.train:
        first = report.train[0]
        lines += [
            "",
            f"## Training step (batch {first.batch_size}, {first.image_res} px, {settings['steps']} steps "
            f"after {settings['warmup']} warm-up)",
            "",
            f"| path | objectives | precision | pairs/s | ms/step | {memory_header} | TFLOP/step | TFLOP/s | MFU |",
            "|---|---|---|---:|---:|---:|---:|---:|---:|",
        ]
        for m in report.train:
            lines.append(
                f"| {m.path} | {m.objectives} | {_precision_label(paths[m.path])} | {_fmt(m.pairs_per_s)} | "
                f"{_fmt(m.ms_per_step)} | {_memory_cell(m)} | "
                f"{_fmt(None if m.flops_per_step is None else m.flops_per_step / 1e12, 3)} | "
                f"{_fmt(m.achieved_tflops, 2)} | {_fmt(None if m.mfu is None else 100 * m.mfu)}{'%' if m.mfu else ''} |"
            )
        lines.append("")
        lines.append(
            "AMC step time / plain ALBEF step time: "
            + ", ".join(f"{name} {ratio:.2f}" for name, ratio in report.amc_overhead.items())
        )
        lines.append(f"\n{_MEMORY_NOTE[meta['device'] == 'cpu']}")
    if report.eval:
        first = report.eval[0]
        lines += [
            "",
            f"## Evaluation (GradCAM maps, {first.image_res} px, layer {meta['gradcam_layer']}, "
            f"{settings['phrases_per_image']} phrases per image)",
            "",
            f"| path | recipe | precision | batch | cases | cases/s | ms/case | {memory_header} | GFLOP/case | TFLOP/s | MFU |",
            "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for m in report.eval:
            lines.append(
                f"| {m.path} | {m.recipe} | {_precision_label(paths[m.path])} | {m.batch} | {m.cases} | "
                f"{_fmt(m.cases_per_s)} | {_fmt(1000 / m.cases_per_s, 2)} | {_memory_cell(m)} | "
                f"{_fmt(None if m.flops_per_case is None else m.flops_per_case / 1e9, 2)} | "
                f"{_fmt(m.achieved_tflops, 2)} | {_fmt(None if m.mfu is None else 100 * m.mfu)}{'%' if m.mfu else ''} |"
            )
        if report.pointing_cases_per_s:
            lines.append(
                f"\nPointing on the host (bicubic upsampling to the original size and argmax, one case at a "
                f"time as `amc evaluate` does): {_fmt(report.pointing_cases_per_s)} cases/s."
            )
    if report.speedups:
        lines += ["", "## Fast path / reference path", "", "| against | what | ratio |", "|---|---|---:|"]
        for reference, ratios in report.speedups.items():
            for what, ratio in ratios.items():
                lines.append(f"| {reference} | {_RATIO_LABELS.get(what, what)} | {ratio:.2f}x |")
    if report.train_equivalence or report.eval_equivalence:
        lines += ["", "## Equivalence (fast vs reference fp32, same weights and data)", ""]
        lines += ["| check | value | required | pass |", "|---|---|---|---|"]
        te = report.train_equivalence
        if te is not None:
            worst = max(te.comparisons, key=lambda c: c.rel_diff if abs(c.reference) > te.atol else 0.0)
            lines.append(
                f"| training losses, 2 steps ({te.precision}, dropout off) | max relative difference "
                f"{te.max_rel_diff:.2e} (worst: step {worst.step} {worst.term}) | "
                f"<= {te.rtol:g} relative (+{te.atol:g}) | {_yes(te.passed)} |"
            )
        ee = report.eval_equivalence
        if ee is not None:
            lines.append(
                f"| GradCAM maps, {ee.cases} cases at {ee.image_res} px | correlation min {ee.min_correlation:.6f}, "
                f"mean {ee.mean_correlation:.6f} | > {MIN_CORRELATION} per case | {_yes(ee.min_correlation > MIN_CORRELATION)} |"
            )
            lines.append(
                f"| pointing point | same on {100 * ee.same_point_fraction:.1f}% of cases | >= "
                f"{100 * MIN_SAME_POINTS:g}% | {_yes(ee.same_point_fraction >= MIN_SAME_POINTS)} |"
            )
    return "\n".join(lines) + "\n"


_RATIO_LABELS = {
    "train_amc_throughput": "training AMC pairs/s (speed-up)",
    "train_amc_memory": "training AMC memory (below 1: the fast path uses less)",
    "train_albef_throughput": "training ALBEF pairs/s (speed-up)",
    "train_albef_memory": "training ALBEF memory (below 1: the fast path uses less)",
    "eval_throughput": "evaluation cases/s (speed-up)",
}

_MEMORY_NOTE = {
    False: "Memory: torch.cuda.max_memory_allocated over the whole measurement (model, optimiser, steps).",
    True: "Memory on the CPU: the tensors (weights, buffers, gradients, optimiser state and the activations "
    "autograd saves during one step), and in brackets the growth of the resident set size sampled every "
    "5 ms (coarse: freed memory is reused between measurements).",
}


def _precision_label(spec: PathSpec) -> str:
    if spec.precision == "bf16":
        return "bf16 autocast"
    return "fp32 + TF32" if spec.tf32 else "fp32"


def _yes(flag: bool) -> str:
    return "yes" if flag else "**NO**"
