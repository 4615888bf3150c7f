"""``amc bench``: runs end to end on the CPU, and the fast and reference paths agree.

No test asserts a speed: throughputs are only checked to be positive numbers.
"""

from __future__ import annotations

import json

import pytest
import torch

from amc.bench import (
    BenchSettings,
    build_model,
    check_eval_equivalence,
    check_train_equivalence,
    initial_weights,
    make_eval_cases,
    path_spec,
    pearson,
    reference_gradcam,
    run_bench,
    run_eval_batch,
)
from amc.cli import main as amc_main
from amc.io import AmcError
from amc.models.config import ModelConfig
from tests.helpers import TINY_MODEL

CPU = torch.device("cpu")


def small_settings(**changes) -> BenchSettings:
    """The tiny model at 32 px (a 4x4 patch grid), short texts, a few steps: seconds on 2 cores."""
    values = dict(
        model_config=str(TINY_MODEL),
        device="cpu",
        batch_size=4,
        image_res=32,
        text_len=8,
        steps=2,
        warmup=1,
        eval_warmup=1,
        eval_cases=16,
        eval_batch=8,
        phrases_per_image=4,
        equivalence_cases=16,
    )
    values.update(changes)
    return BenchSettings(**values)


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: these tiny models gain nothing from two, and on a busy 2-core machine
    two threads fighting another process's threads make the tests many times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny32() -> ModelConfig:
    return ModelConfig.from_file(TINY_MODEL).replace(image_res=32, queue_size=64)


@pytest.mark.slow
def test_cli_runs_end_to_end_and_writes_json_and_table(tmp_path):
    out, table = tmp_path / "bench.json", tmp_path / "bench.md"
    argv = ["bench", "--device", "cpu", "--model-config", str(TINY_MODEL), "--batch-size", "4"]
    argv += ["--image-res", "32", "--text-len", "8", "--steps", "2", "--warmup", "1", "--eval-warmup", "1"]
    argv += ["--eval-cases", "16", "--eval-batch", "8", "--phrases-per-image", "4"]
    argv += ["--equivalence-cases", "16", "--out", str(out), "--markdown", str(table)]
    assert amc_main(argv) == 0

    report = json.loads(out.read_text())
    meta = report["meta"]
    assert meta["card"] and meta["torch"] == torch.__version__ and meta["device"] == "cpu"
    assert meta["command"]  # this process's own command line (here: pytest's)
    assert (
        "--batch-size 4 " in meta["equivalent_command"]
        and "--paths fast,reference" in meta["equivalent_command"]
    )
    assert [p["name"] for p in report["paths"]] == ["fast", "reference"]

    train = {(m["path"], m["objectives"]): m for m in report["train"]}
    assert set(train) == {(p, o) for p in ("fast", "reference") for o in ("amc", "albef")}
    for m in train.values():
        assert m["pairs_per_s"] > 0 and m["ms_per_step"] > 0 and m["steps"] == 2
        assert m["flops_per_step"] > 0 and m["achieved_tflops"] > 0
        assert m["mfu"] is None  # no peak on the CPU unless --peak-tflops is given
        assert m["tensor_memory_mib"] > 0 and m["peak_memory_mib"] >= 0
    # The AMC step does strictly more arithmetic than the plain ALBEF step (second-order GradCAM).
    assert train[("fast", "amc")]["flops_per_step"] > train[("fast", "albef")]["flops_per_step"]
    assert set(report["amc_overhead"]) == {"fast", "reference"}

    evals = {m["path"]: m for m in report["eval"]}
    assert evals["fast"]["recipe"] == "shared-image"
    assert evals["reference"]["recipe"] == "per-pair-full-backward" and evals["reference"]["batch"] == 8
    for m in evals.values():
        assert m["cases_per_s"] > 0 and m["cases"] == 8  # 16 cases, one warm-up batch of 8
        assert m["flops_per_case"] > 0
    # The reference recipe re-encodes the image per pair and back-propagates into it: more work per case.
    assert evals["reference"]["flops_per_case"] > evals["fast"]["flops_per_case"]
    assert report["pointing_cases_per_s"] > 0

    assert set(report["speedups"]["reference"]) >= {"train_amc_throughput", "eval_throughput"}
    assert report["train_equivalence"]["passed"] and report["eval_equivalence"]["passed"]
    assert report["equivalence_passed"] is True

    text = table.read_text()
    for heading in ("## Training step", "## Evaluation", "## Fast path / reference path", "## Equivalence"):
        assert heading in text


def test_training_losses_agree_between_fast_and_reference(tiny32):
    settings = small_settings()
    state = initial_weights(tiny32, 0, CPU)
    fast, reference = path_spec("fast", settings, CPU), path_spec("reference", settings, CPU)
    assert (fast.attention, reference.attention) == ("fast", "reference")
    assert (fast.optimizer, reference.optimizer) == ("fused", "plain")
    result = check_train_equivalence(fast, reference, tiny32, state, settings, CPU)

    assert result.precision == "fp32" and result.rtol == 1e-4
    terms = {c.term for c in result.comparisons}
    assert {"loss", "loss_itc", "loss_itm", "loss_mlm", "loss_amc", "l_mean", "l_max"} <= terms
    assert {c.step for c in result.comparisons} == {1, 2}  # step 2: after AdamW and the momentum update
    for c in result.comparisons:
        assert c.passed, c
        assert c.abs_diff <= 1e-4 * abs(c.reference) + 1e-6
    assert result.passed


def test_gradcam_maps_and_points_agree_between_recipes(tiny32):
    settings = small_settings(equivalence_cases=24, phrases_per_image=3)
    config = tiny32
    state = initial_weights(config, 1, CPU)
    fast, reference = path_spec("fast", settings, CPU), path_spec("reference", settings, CPU)
    result = check_eval_equivalence(fast, reference, config, state, settings, CPU)
    assert result.cases == 24
    assert result.min_correlation > 0.99
    assert result.same_point_fraction >= 0.99
    assert result.passed


def test_reference_recipe_back_propagates_into_the_image_encoder(tiny32):
    """The released grounding_eval fills every parameter's gradient; the fast recipe touches none."""
    settings = small_settings()
    state = initial_weights(tiny32, 0, CPU)
    cases = make_eval_cases(tiny32, 8, 4, 8, seed=0, device=CPU)
    reference = build_model(tiny32, path_spec("reference", settings, CPU), state, CPU).eval()
    images = cases.images[cases.image_index]
    maps = reference_gradcam(reference, images, cases.input_ids, cases.attention_mask)
    assert maps.shape == (8, 4, 4)
    assert reference.visual_encoder.patch_embed.proj.weight.grad is not None

    fast_spec = path_spec("fast", settings, CPU)
    fast = build_model(tiny32, fast_spec, state, CPU).eval()
    fast_maps = run_eval_batch(fast, cases, slice(0, 8), fast_spec, CPU)
    assert all(p.grad is None for p in fast.parameters())
    torch.testing.assert_close(fast_maps, maps, rtol=1e-4, atol=1e-7)


def test_released_momentum_update_equals_the_foreach_one(tiny32):
    settings = small_settings()
    state = initial_weights(tiny32, 0, CPU)
    models = [
        build_model(tiny32, path_spec(name, settings, CPU), state, CPU) for name in ("fast", "reference")
    ]
    for model in models:
        with torch.no_grad():
            for param in model.visual_encoder.parameters():
                param.add_(1.0)  # online weights move away from the momentum copies
        model.momentum_update()
    fast, reference = (m.state_dict() for m in models)
    for name in fast:
        torch.testing.assert_close(fast[name], reference[name], rtol=0, atol=1e-6)
    # The tied MLM decoder weight stays tied in the momentum copy after the loop update.
    text_m = models[1].text_encoder_m
    assert text_m.cls.predictions.decoder.weight is text_m.bert.embeddings.word_embeddings.weight


def test_pearson_per_row_and_constant_rows():
    a = torch.tensor([[1.0, 2.0, 3.0], [2.0, 2.0, 2.0], [2.0, 2.0, 2.0]])
    b = torch.tensor([[2.0, 4.0, 6.1], [2.0, 2.0, 2.0], [1.0, 1.0, 1.0]])
    corr = pearson(a, b)
    assert corr[0] > 0.999 and corr[1] == 1.0 and corr[2] == 0.0


def test_unknown_path_or_part_is_an_error():
    with pytest.raises(AmcError, match="unknown path"):
        run_bench(small_settings(paths=("fast", "released")))
    with pytest.raises(AmcError, match="unknown measurement"):
        run_bench(small_settings(measure=("speed",)))


def test_only_the_requested_parts_run():
    report = run_bench(small_settings(paths=("reference",), measure=("eval",), eval_cases=8, eval_batch=8))
    assert report.train == [] and report.train_equivalence is None and report.speedups == {}
    assert [m.path for m in report.eval] == ["reference"]
