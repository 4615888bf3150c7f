"""The evaluation engine against a slow per-case reference, and its errors on bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from amc.cli import main as amc_main
from amc.data.transforms import EvalTransform
from amc.evaluate import EvalInputs
from amc.io import AmcError
from amc.metrics import pointing_hit, pointing_point
from amc.models.albef import ALBEF
from amc.models.checkpoint import save_checkpoint
from amc.models.config import ModelConfig
from amc.models.tokenizer import AlbefTokenizer, load_tokenizer, pre_caption
from amc.records import Record, load_records
from amc.result_format import read_result, result_from_dict
from tests.helpers import TINY_MODEL, evaluate_flickr


def _reference_case(model, tokenizer, record, transform) -> tuple[int, int]:
    """One case at a time, straight from the released evaluation: full forward, gradient of the ITM logit w.r.t. P."""
    with Image.open(record.image) as image:
        pixels = transform(image.convert("RGB"))[None]
    tokens = tokenizer([pre_caption(record.phrase, 50)], max_length=None)  # Flickr30k: 50 words, no token cap
    image_embeds = model.encode_image(pixels)
    text_embeds = model.encode_text(tokens.input_ids, tokens.attention_mask)
    fused = model.fuse(text_embeds, tokens.attention_mask, image_embeds, capture_cross_attention=True)
    score = model.itm_logits(fused.hidden_states[:, 0])[0, 1]
    attention = fused.cross_attention
    grad = torch.autograd.grad(score, attention)[0]
    cam = attention[..., 1:] * grad[..., 1:].clamp(min=0)
    cam = cam * tokens.attention_mask[:, None, :, None]
    h, w = model.image_grid
    cam = cam.reshape(*cam.shape[:3], h, w).mean(dim=1).mean(dim=1)[0]
    return pointing_point(cam.detach(), record.height, record.width)


def test_evaluate_matches_a_slow_per_case_reference(tmp_path, ci_data, random_checkpoint):
    out = tmp_path / "result.json"
    assert (
        evaluate_flickr(
            ci_data.flickr_test, random_checkpoint, ci_data.vocab, out, "--heatmaps", tmp_path / "h.npz"
        )
        == 0
    )
    result = json.loads(out.read_text())
    records = load_records(ci_data.flickr_test)
    assert result["summary"]["n_cases"] == len(records) == len(result["cases"])
    assert result["summary"]["checkpoint_sha256"] and result["summary"]["code_version"].startswith("amc")

    model = ALBEF(ModelConfig.from_file(TINY_MODEL))
    model.load_state_dict(torch.load(random_checkpoint, weights_only=False)["model"])
    model.eval()
    tokenizer = load_tokenizer(ci_data.vocab)
    transform = EvalTransform(96, "cv2-linear")  # Flickr30k's, as released
    by_id = {c["id"]: c for c in result["cases"]}
    same_point, hits = 0, 0
    for record in records:
        point = _reference_case(model, tokenizer, record, transform)
        same_point += tuple(by_id[record.id]["point"]) == point
        hit = pointing_hit(point, record.boxes)
        hits += hit
        assert by_id[record.id]["hit"] == pointing_hit(tuple(by_id[record.id]["point"]), record.boxes)
    assert same_point >= 0.98 * len(records)
    assert abs(hits - result["summary"]["n_hits"]) <= max(1, len(records) // 50)
    assert result["summary"]["accuracy"] == pytest.approx(result["summary"]["n_hits"] / len(records))
    misses = [c for c in result["cases"] if not c["hit"]]
    assert all(c["miss"] in ("other_object", "background") for c in misses)


def test_missing_image_is_a_clear_error_or_counted_with_the_option(tmp_path, ci_data, random_checkpoint):
    rows = [json.loads(line) for line in Path(ci_data.flickr_test).read_text().splitlines()][:4]
    rows[0]["image"], rows[1]["image"] = str(tmp_path / "nowhere.jpg"), str(tmp_path / "gone.jpg")
    for row in rows[2:]:
        row["image"] = str((Path(ci_data.flickr_test).parent / row["image"]).resolve())
    records = tmp_path / "records.jsonl"
    records.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert evaluate_flickr(records, random_checkpoint, ci_data.vocab, tmp_path / "a.json") == 2
    assert not (tmp_path / "a.json").exists()
    assert (
        evaluate_flickr(
            records, random_checkpoint, ci_data.vocab, tmp_path / "b.json", "--skip-missing-images"
        )
        == 0
    )
    summary = json.loads((tmp_path / "b.json").read_text())["summary"]
    assert summary["skipped"] == {"image missing": 2} and summary["n_cases"] == 2


def test_empty_records_file_is_an_error(tmp_path, ci_data, random_checkpoint, caplog):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert evaluate_flickr(empty, random_checkpoint, ci_data.vocab, tmp_path / "out.json") == 2
    assert "empty.jsonl: no records" in caplog.text


def test_checkpoint_of_another_model_size_is_an_error(tmp_path, ci_data, caplog):
    config = ModelConfig.from_file(TINY_MODEL)
    bigger = ModelConfig.from_dict({**config.to_dict(), "embed_dim": 32})
    model = ALBEF(bigger)
    save_checkpoint(tmp_path / "other.pt", model)
    assert (
        evaluate_flickr(ci_data.flickr_test, tmp_path / "other.pt", ci_data.vocab, tmp_path / "out.json") == 2
    )
    assert "other.pt" in caplog.text


def test_box_metric_with_a_proposals_file(tmp_path, ci_data, random_checkpoint):
    """With --proposals, every case also gets ALBEF's box metric; a proposal equal to the
    ground-truth box as the only candidate is always a hit."""
    records = load_records(ci_data.refcoco_testA)
    proposals = {}
    for record in records:
        x1, y1, x2, y2 = record.boxes[0]
        proposals.setdefault(str(record.image_id), []).append([x1, y1, x2 - x1, y2 - y1])
    path = tmp_path / "proposals.json"
    path.write_text(json.dumps(proposals))
    out = tmp_path / "result.json"
    code = amc_main(
        [
            "evaluate", "--checkpoint", str(random_checkpoint), "--model-config", str(TINY_MODEL),
            "--vocab", str(ci_data.vocab), "--records", str(ci_data.refcoco_testA), "--benchmark", "refcoco+",
            "--split", "testA", "--out", str(out), "--num-workers", "0", "--proposals", str(path),
        ]
    )  # fmt: skip
    assert code == 0
    result = json.loads(out.read_text())
    one_candidate = {k for k, v in proposals.items() if len(v) == 1}
    by_id = {c["id"]: c for c in result["cases"]}
    for record in records:
        case = by_id[record.id]
        assert case["box_hit"] in (True, False)
        if str(record.image_id) in one_candidate:
            assert case["box_hit"] is True
    box_hits = [case["box_hit"] for case in result["cases"]]
    assert any(box_hits) and result["summary"]["box_accuracy"] == pytest.approx(sum(box_hits) / len(box_hits))


def _cases(path: Path) -> list[dict]:
    return json.loads(path.read_text())["cases"]


def test_several_splits_in_one_call_equal_separate_calls(tmp_path, ci_data, random_checkpoint, caplog):
    torch.manual_seed(1)
    other = ALBEF(ModelConfig.from_file(TINY_MODEL))
    save_checkpoint(tmp_path / "other.pt", other)
    checkpoints = {"test": random_checkpoint, "testA": tmp_path / "other.pt"}  # one per split
    base = ["evaluate", "--model-config", str(TINY_MODEL),
            "--vocab", str(ci_data.vocab), "--num-workers", "0", "--limit", "12"]  # fmt: skip
    together = [tmp_path / "flickr.json", tmp_path / "refcoco.json"]
    code = amc_main(
        [
            *base, "--checkpoint", *map(str, checkpoints.values()),
            "--records", str(ci_data.flickr_test), str(ci_data.refcoco_testA),
            "--benchmark", "flickr30k", "refcoco+", "--split", "test", "testA",
            "--image-res", "64", "96", "--out", *map(str, together),
        ]
    )  # fmt: skip
    assert code == 0
    for records, benchmark, split, res, combined in (
        (ci_data.flickr_test, "flickr30k", "test", "64", together[0]),
        (ci_data.refcoco_testA, "refcoco+", "testA", "96", together[1]),
    ):
        alone = tmp_path / f"alone-{split}.json"
        args = ["--records", str(records), "--benchmark", benchmark, "--split", split, "--image-res", res]
        assert amc_main([*base, "--checkpoint", str(checkpoints[split]), *args, "--out", str(alone)]) == 0
        assert _cases(combined) == _cases(alone)
        summary = json.loads(combined.read_text())["summary"]
        assert (summary["benchmark"], summary["split"], summary["image_res"]) == (benchmark, split, int(res))
        assert summary["checkpoint"] == str(checkpoints[split])
    # one --out per split, or nothing is written
    bad = [*base, "--checkpoint", str(random_checkpoint), "--records", str(ci_data.flickr_test), str(ci_data.refcoco_testA),
           "--benchmark", "flickr30k", "--split", "test", "testA", "--out", str(tmp_path / "x.json")]  # fmt: skip
    assert amc_main(bad) == 2
    assert "--out has 1 values for 2 --records" in caplog.text
    assert not (tmp_path / "x.json").exists()


# --------------------------------------------------------------- per-benchmark images and text


def test_eval_inputs_per_benchmark_with_overrides():
    assert EvalInputs.for_benchmark("flickr30k", 256) == EvalInputs(256, "cv2-linear", 50)
    assert EvalInputs.for_benchmark("refcoco+", 384) == EvalInputs(384, "pil-bicubic", 30)
    assert EvalInputs.for_benchmark("refclef", 384) == EvalInputs(384, "pil-bicubic", 30)  # the defaults
    assert EvalInputs.for_benchmark(None, 96) == EvalInputs(96, "pil-bicubic", 30)
    assert (
        EvalInputs.for_benchmark("flickr30k", 96, resize="pil-bicubic", max_words=7).resize == "pil-bicubic"
    )
    assert EvalInputs.for_benchmark("flickr30k", 96, resize="auto").resize == "cv2-linear"
    with pytest.raises(AmcError, match="resize must be one of auto, cv2-linear, pil-bicubic"):
        EvalInputs.for_benchmark("flickr30k", 96, resize="bicubic")


# a vocabulary whose words split into several word pieces: "abab" is ab ##ab
PIECES_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "ab", "##ab"]
# 7 words, 56 word pieces: [CLS] + 56 = 57 tokens, more than max_words + 1 on both benchmarks (51, 31)
LONG_PHRASE = " ".join(["ab" * 8] * 7)


def test_evaluation_tokens_are_not_capped_and_too_long_is_an_error():
    tokenizer = AlbefTokenizer(PIECES_VOCAB)
    inputs = EvalInputs.for_benchmark("refcoco+", 96)
    text = inputs.text(LONG_PHRASE)
    tokens = inputs.tokens(tokenizer, [text, "ab"], max_positions=64)
    assert tokens.input_ids.shape == (2, 57) and tokens.attention_mask.sum(1).tolist() == [57, 2]
    with pytest.raises(AmcError, match=r"'abab.*abab' is 57 tokens .* model's 12 position embeddings"):
        inputs.tokens(tokenizer, [text], max_positions=12)
    assert inputs.tokens(tokenizer, [text], max_positions=57).input_ids.shape == (1, 57)  # exactly fits


@pytest.fixture
def pieces_case(tmp_path):
    """A tiny random model, a vocabulary of word pieces, and one Flickr30k-like and one RefCOCO+-like record."""
    torch.manual_seed(0)
    model = ALBEF(ModelConfig.from_file(TINY_MODEL)).eval()
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(PIECES_VOCAB + [f"w{i}" for i in range(512 - len(PIECES_VOCAB))]) + "\n")
    rng = np.random.default_rng(0)
    image = tmp_path / "img.png"
    Image.fromarray(rng.integers(0, 256, (70, 110, 3), dtype=np.uint8)).save(image)
    records = {}
    for benchmark in ("flickr30k", "refcoco+"):
        record = Record(
            f"{benchmark}/0", benchmark, "val", str(image), 110, 70, LONG_PHRASE, [[5, 5, 40, 40]]
        )
        records[benchmark] = tmp_path / f"{benchmark}.jsonl"
        records[benchmark].write_text(json.dumps(vars(record)) + "\n")
    return model, vocab, image, records


def spy_on_model_inputs(monkeypatch) -> list:
    """Record every image batch the model encodes and every token batch GradCAM gets."""
    import amc.gradcam

    seen = []
    encode_image, gradcam_eval = ALBEF.encode_image, amc.gradcam.gradcam_eval

    def encode_spy(self, images, *args, **kwargs):
        seen.append(("images", images.detach().clone()))
        return encode_image(self, images, *args, **kwargs)

    def gradcam_spy(model, image_embeds, input_ids, *args, **kwargs):
        seen.append(("tokens", input_ids.clone()))
        return gradcam_eval(model, image_embeds, input_ids, *args, **kwargs)

    monkeypatch.setattr(ALBEF, "encode_image", encode_spy)
    monkeypatch.setattr(amc.gradcam, "gradcam_eval", gradcam_spy)
    return seen


def expected_pixels(image_path, resize: str) -> torch.Tensor:
    with Image.open(image_path) as image:
        return EvalTransform(96, resize)(image.convert("RGB"))


def test_evaluate_uses_the_benchmarks_transform_and_uncapped_tokens(pieces_case, monkeypatch, tmp_path):
    model, vocab, image, records = pieces_case
    checkpoint = tmp_path / "model.pt"
    save_checkpoint(checkpoint, model)
    seen = spy_on_model_inputs(monkeypatch)
    for benchmark, resize in (("flickr30k", "cv2-linear"), ("refcoco+", "pil-bicubic")):
        seen.clear()
        out = tmp_path / f"{benchmark}.json"
        args = ["--records", records[benchmark], "--benchmark", benchmark, "--split", "val", "--out", out]
        assert _evaluate_args(checkpoint, vocab, *args) == 0
        (_, images), (_, tokens) = seen
        assert torch.equal(images[0], expected_pixels(image, resize))
        assert tokens.shape == (1, 57)  # a cap at max_words + 1 would cut it to 51 / 31
        assert json.loads(out.read_text())["summary"]["resize"] == resize
    # --resize overrides the benchmark's
    seen.clear()
    out = tmp_path / "override.json"
    args = ["--records", records["flickr30k"], "--benchmark", "flickr30k", "--split", "val", "--out", out]
    assert _evaluate_args(checkpoint, vocab, *args, "--resize", "pil-bicubic", "--max-words", "2") == 0
    (_, images), (_, tokens) = seen
    assert torch.equal(images[0], expected_pixels(image, "pil-bicubic")) and tokens.shape == (1, 17)


def _evaluate_args(checkpoint, vocab, *args) -> int:
    return amc_main(
        ["evaluate", "--checkpoint", str(checkpoint), "--model-config", str(TINY_MODEL), "--vocab", str(vocab),
         "--num-workers", "0", *map(str, args)]
    )  # fmt: skip


# 40 one-piece words: Flickr30k keeps 50 words, RefCOCO+ 30 (released dataset/grounding_dataset.py)
WORDY_PHRASE = " ".join(f"w{i}" for i in range(40))


@pytest.mark.parametrize(
    ("benchmark", "extra", "limit"),
    [
        ("flickr30k", [], 50),
        ("refcoco+", [], 30),
        ("refclef", [], 30),
        ("flickr30k", ["--max-words", "5"], 5),
    ],
)
def test_the_word_limit_is_the_benchmarks(pieces_case, monkeypatch, tmp_path, benchmark, extra, limit):
    model, vocab, image, _ = pieces_case
    checkpoint = tmp_path / "model.pt"
    save_checkpoint(checkpoint, model)
    records = tmp_path / "wordy.jsonl"
    record = Record(f"{benchmark}/0", benchmark, "val", str(image), 110, 70, WORDY_PHRASE, [[5, 5, 40, 40]])
    records.write_text(json.dumps(vars(record)) + "\n")
    seen = spy_on_model_inputs(monkeypatch)
    out = tmp_path / "result.json"
    args = ["--records", records, "--benchmark", benchmark, "--split", "val", "--out", out, *extra]
    assert _evaluate_args(checkpoint, vocab, *args) == 0
    (_, ids) = seen[1]
    assert ids.shape == (1, 1 + min(40, limit))  # [CLS] + the words kept
    assert json.loads(out.read_text())["summary"]["max_words"] == limit


def test_selection_uses_the_benchmarks_transform_and_uncapped_tokens(pieces_case, monkeypatch, tmp_path):
    from amc.selection import BestCheckpoints, parse_selection

    model, vocab, image, records = pieces_case
    splits = parse_selection(
        {
            "splits": [
                {"name": "flickr30k", "records": str(records["flickr30k"])},
                {"name": "refcoco+", "records": str(records["refcoco+"])},
                {"name": "refclef", "records": str(records["refcoco+"]), "resize": "cv2-linear"},  # override
            ]
        }
    )
    selector = BestCheckpoints(tmp_path, splits, load_tokenizer(vocab), torch.device("cpu"), 0)
    seen = spy_on_model_inputs(monkeypatch)
    selector.evaluate(model, epoch=0, step=1, save=lambda path: None)
    images = [value for kind, value in seen if kind == "images"]
    tokens = [value for kind, value in seen if kind == "tokens"]
    for batch, resize in zip(images, ("cv2-linear", "pil-bicubic", "cv2-linear"), strict=True):
        assert torch.equal(batch[0], expected_pixels(image, resize))
    assert [t.shape[1] for t in tokens] == [57, 57, 57]
    with pytest.raises(AmcError, match="selection.splits entry 1: resize must be one of"):
        parse_selection({"splits": [{"name": "flickr30k", "records": "x", "resize": "linear"}]})


@pytest.mark.parametrize(("benchmark", "resize"), [("flickr30k", "cv2-linear"), ("refcoco+", "pil-bicubic")])
def test_gradcam_cli_uses_the_benchmarks_transform_and_uncapped_tokens(
    pieces_case, monkeypatch, tmp_path, benchmark, resize
):
    model, vocab, image, _ = pieces_case
    save_checkpoint(tmp_path / "model.pt", model)
    seen = spy_on_model_inputs(monkeypatch)
    common = ["gradcam", "--model-config", str(TINY_MODEL), "--checkpoint", str(tmp_path / "model.pt")]
    common += [
        "--vocab",
        str(vocab),
        "--image",
        str(image),
        "--text",
        LONG_PHRASE,
        "--output",
        str(tmp_path / "h.npy"),
    ]
    assert amc_main([*common, "--benchmark", benchmark]) == 0
    (_, images), (_, tokens) = seen
    assert torch.equal(images[0], expected_pixels(image, resize)) and tokens.shape == (1, 57)
    seen.clear()
    other = "pil-bicubic" if resize == "cv2-linear" else "cv2-linear"
    assert amc_main([*common, "--benchmark", benchmark, "--resize", other]) == 0
    assert torch.equal(seen[0][1][0], expected_pixels(image, other))


def test_report_qualitative_heatmaps_are_the_evaluated_ones(pieces_case, monkeypatch, tmp_path):
    """The qualitative figure's maps: in process, one model load per method, amc evaluate's inputs and maps."""
    from amc.models import checkpoint as checkpoint_module
    from amc.report import figures

    model, vocab, image, records = pieces_case
    checkpoint = tmp_path / "model.pt"
    save_checkpoint(checkpoint, model, vocab=load_tokenizer(vocab).ids_to_tokens)
    loads, read = [], checkpoint_module.read_checkpoint
    monkeypatch.setattr(checkpoint_module, "read_checkpoint", lambda path: loads.append(path) or read(path))
    seen = spy_on_model_inputs(monkeypatch)
    maps = {}
    for benchmark, resize in (("flickr30k", "cv2-linear"), ("refcoco+", "pil-bicubic")):
        loads.clear(), seen.clear()
        first = load_records(records[benchmark])[0]
        cases = [first, Record(**{**vars(first), "id": f"{benchmark}/1"})]  # two examples, one model load
        maps[benchmark] = figures.method_heatmaps(str(checkpoint), cases, benchmark=benchmark, image_res=96)
        assert len(loads) == 1 and set(maps[benchmark]) == {f"{benchmark}/0", f"{benchmark}/1"}
        (_, images), (_, tokens) = seen
        assert torch.equal(images[0], expected_pixels(image, resize)) and tokens.shape == (2, 57)
    monkeypatch.undo()
    for benchmark in ("flickr30k", "refcoco+"):
        out, heatmaps = tmp_path / f"{benchmark}.json", tmp_path / f"{benchmark}.npz"
        args = ["--records", records[benchmark], "--benchmark", benchmark, "--split", "val", "--out", out]
        assert _evaluate_args(checkpoint, vocab, *args, "--heatmaps", heatmaps) == 0
        evaluated = np.load(heatmaps)[f"{benchmark}/0"]
        np.testing.assert_allclose(maps[benchmark][f"{benchmark}/0"], evaluated, rtol=1e-5, atol=1e-7)


# --------------------------------------------------------------- what a result records


def test_a_result_records_the_run_and_its_heatmaps_reproduce_its_points(tmp_path, ci_data, random_checkpoint):
    import datetime
    import hashlib

    from amc.metrics import pointing_point

    out, maps = tmp_path / "result.json", tmp_path / "maps.npz"
    args = ["--limit", "5", "--method", "amc", "--seed", "3", "--heatmaps", maps, "--image-res", "64"]
    assert evaluate_flickr(ci_data.flickr_test, random_checkpoint, ci_data.vocab, out, *args) == 0
    result = json.loads(out.read_text())
    summary, cases = result["summary"], result["cases"]
    records = load_records(ci_data.flickr_test)[:5]
    assert [c["id"] for c in cases] == [r.id for r in records]
    hits = sum(c["hit"] for c in cases)
    assert (summary["benchmark"], summary["split"], summary["method"], summary["seed"]) == (
        "flickr30k",
        "test",
        "amc",
        3,
    )
    assert (summary["n_cases"], summary["n_hits"], summary["accuracy"]) == (5, hits, pytest.approx(hits / 5))
    assert summary["misses"] == {
        m: sum(c["miss"] == m for c in cases) for m in {c["miss"] for c in cases} - {None}
    }
    assert (summary["image_res"], summary["resize"], summary["max_words"]) == (64, "cv2-linear", 50)
    assert summary["model_config"] == ModelConfig.from_file(TINY_MODEL).replace(image_res=64).to_dict()
    assert summary["records"] == str(ci_data.flickr_test) and summary["checkpoint"] == str(random_checkpoint)
    assert summary["checkpoint_sha256"] == hashlib.sha256(random_checkpoint.read_bytes()).hexdigest()
    assert summary["skipped"] == {} and summary["device"] == "cpu" and "box_accuracy" not in summary
    assert summary["code_version"].startswith("amc 0.1.0")
    assert datetime.datetime.fromisoformat(summary["created"]).tzinfo is not None
    with np.load(maps) as heatmaps:
        assert sorted(heatmaps.files) == sorted(r.id for r in records)
        for record, case in zip(records, cases, strict=True):
            assert heatmaps[record.id].shape == (8, 8)  # the 64 px model's patch grid
            assert pointing_point(
                torch.from_numpy(heatmaps[record.id]), record.height, record.width
            ) == tuple(case["point"])
    loaded = result_from_dict(read_result(out))
    assert loaded.summary == summary and [vars(c) for c in loaded.cases] == cases


def _same_image_records(image, phrases: list[str]) -> list[Record]:
    return [Record(f"r/{i}", "refcoco+", "val", str(image), 110, 70, phrase, [[5, 5, 40, 40]], image_id="3")
            for i, phrase in enumerate(phrases)]  # fmt: skip


def test_the_engine_batches_loads_and_reports_progress_as_asked(pieces_case, monkeypatch):
    """evaluate() hands its loader settings to the DataLoader, counts every case on one progress bar
    (a line at most every 5 s in a log), and refuses inputs made for another image size."""
    import tqdm

    from amc.evaluate import evaluate

    model, vocab, image, _ = pieces_case
    loaders, bars, real_loader = [], [], torch.utils.data.DataLoader

    def loader_spy(*args, **kwargs):
        loaders.append(kwargs)
        return real_loader(*args, **{**kwargs, "num_workers": 0})  # no worker processes in a test

    class RecordedBar:
        def __init__(self, **kwargs):
            self.kwargs, self.updates, self.closed = kwargs, [], False
            bars.append(self)

        def update(self, n):
            self.updates.append(n)

        def close(self):
            self.closed = True

    monkeypatch.setattr(torch.utils.data, "DataLoader", loader_spy)
    monkeypatch.setattr(tqdm, "tqdm", RecordedBar)
    inputs = EvalInputs.for_benchmark("refcoco+", model.config.image_res)
    settings = dict(device=torch.device("cpu"), images_per_batch=1, phrases_per_batch=2, num_workers=3)
    records = _same_image_records(image, ["ab", "ab ab", "ab ab ab"])
    cases, skipped = evaluate(model, load_tokenizer(vocab), records, inputs=inputs, **settings)
    assert [c.id for c in cases] == ["r/0", "r/1", "r/2"] and skipped == {}
    assert [(k["batch_size"], k["num_workers"], k["pin_memory"]) for k in loaders] == [(1, 3, False)]
    ((bar),) = bars
    assert bar.kwargs == {"total": 3, "desc": "evaluate", "unit": "case", "mininterval": 5.0}
    assert bar.updates == [2, 1] and bar.closed
    other = EvalInputs.for_benchmark("refcoco+", 2 * model.config.image_res)
    message = (
        f"evaluation at {other.image_res} px needs a model at that resolution, not {model.config.image_res}"
    )
    with pytest.raises(AmcError, match=message):
        evaluate(model, load_tokenizer(vocab), records, inputs=other, **settings)


def test_an_empty_phrase_is_skipped_alone_and_the_batch_goes_on(pieces_case):
    """Phrases empty after clean-up, alone in their batch or beside others, are counted once each;
    the phrases after them, of the same image, are still evaluated. The same for several explainers,
    whose cases also get the box metric from the proposals."""
    from amc.evaluate import evaluate, evaluate_explainers
    from amc.explainers import GRADCAM, Explainer

    model, vocab, image, _ = pieces_case
    inputs = EvalInputs.for_benchmark("refcoco+", model.config.image_res)
    records = _same_image_records(image, ["?!", "ab", "...", "ab ab", "ab ab ab"])
    for phrases_per_batch in (1, 5):
        settings = dict(
            inputs=inputs, device=torch.device("cpu"), phrases_per_batch=phrases_per_batch, num_workers=0
        )
        cases, skipped = evaluate(model, load_tokenizer(vocab), records, **settings)
        assert [c.id for c in cases] == ["r/1", "r/3", "r/4"]
        assert skipped == {"phrase empty after clean-up": 2}
        explainer = Explainer(GRADCAM, model.gradcam_layer)
        proposals = {"3": [[5.0, 5.0, 35.0, 35.0]]}
        by_explainer, skipped = evaluate_explainers(
            model, load_tokenizer(vocab), records, [explainer], proposals=proposals, **settings
        )
        assert [(c.id, c.point, c.box_hit is not None) for c in by_explainer[explainer]] == [
            (c.id, c.point, True) for c in cases
        ]
        assert skipped == {"phrase empty after clean-up": 2}


def test_a_phrase_that_cleans_up_to_nothing_is_skipped_and_counted(pieces_case, tmp_path):
    model, vocab, image, _ = pieces_case
    checkpoint = tmp_path / "model.pt"
    save_checkpoint(checkpoint, model)
    rows = [Record(f"r/{i}", "refcoco+", "val", str(image), 110, 70, phrase, [[5, 5, 40, 40]])
            for i, phrase in enumerate(["ab", "?!", "ab ab", "..."])]  # fmt: skip
    records = tmp_path / "r.jsonl"
    records.write_text("".join(json.dumps(vars(r)) + "\n" for r in rows))
    out = tmp_path / "out.json"
    args = ["--records", records, "--benchmark", "refcoco+", "--split", "val", "--out", out]
    assert _evaluate_args(checkpoint, vocab, *args, "--phrases-per-batch", "2") == 0
    result = json.loads(out.read_text())
    assert [c["id"] for c in result["cases"]] == ["r/0", "r/2"]
    assert (
        result["summary"]["skipped"] == {"phrase empty after clean-up": 2}
        and result["summary"]["n_cases"] == 2
    )
    only_empty = tmp_path / "empty.jsonl"
    only_empty.write_text(json.dumps(vars(rows[1])) + "\n")
    args = ["--records", only_empty, "--benchmark", "refcoco+", "--split", "val", "--out", out]
    before = out.read_text()
    # nothing left to evaluate: an error naming the skips, and no result (the earlier one stays)
    assert _evaluate_args(checkpoint, vocab, *args) == 2
    assert out.read_text() == before


def _parsed(*argv: str):
    import argparse

    from amc.evaluate import configure_parser

    parser = argparse.ArgumentParser()
    configure_parser(parser)
    return parser.parse_args(["--checkpoint", "c.pt", "--model-config", "m.yaml", "--vocab", "v", *argv])


def test_per_split_arguments_pair_up_and_one_value_serves_every_split():
    from amc.evaluate import SplitTask, split_tasks

    args = _parsed("--records", "a.jsonl", "b.jsonl", "--benchmark", "refcoco+", "--split", "testA", "testB",
                   "--out", "a.json", "b.json", "--image-res", "384", "--resize", "auto", "cv2-linear")  # fmt: skip
    assert split_tasks(args) == [
        SplitTask("a.jsonl", "refcoco+", "testA", "a.json", 384, "c.pt", "auto"),
        SplitTask("b.jsonl", "refcoco+", "testB", "b.json", 384, "c.pt", "cv2-linear"),
    ]
    args = _parsed("--records", "a.jsonl", "--benchmark", "flickr30k", "--split", "val", "--out", "a.json")
    (task,) = split_tasks(args)
    assert (task.image_res, task.resize, args.max_words, args.num_workers, args.images_per_batch) == (
        None,
        None,
        None,
        2,
        16,
    )
    assert (args.phrases_per_batch, args.limit, args.skip_missing_images, args.device) == (
        64,
        None,
        False,
        None,
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--split", "a", "--out", "x.json", "y.json"], "--split has 1 values for 2 --records"),
        (["--split", "a", "b", "--out", "x.json"], "--out has 1 values for 2 --records"),
        (["--split", "a", "b", "--out", "x.json", "x.json"], "--out: two splits would write the same file"),
        (["--split", "a", "b", "--out", "x.json", "y.json", "--heatmaps", "h.npz"], "--heatmaps needs a single split"),
        (["--split", "a", "b", "--out", "x.json", "y.json", "--image-res", "1", "2", "3"], "--image-res has 3 values for 2 --records"),
        (["--split", "a", "b", "--out", "x.json", "y.json", "--benchmark", "flickr30k", "flickr30k", "flickr30k"], "--benchmark has 3 values for 2 --records"),
        (["--split", "a", "b", "--out", "x.json", "y.json", "--checkpoint", "a.pt", "b.pt", "c.pt"], "--checkpoint has 3 values for 2 --records"),
        (["--split", "a", "b", "--out", "x.json", "y.json", "--resize", "auto", "auto", "auto"], "--resize has 3 values for 2 --records"),
    ],
)  # fmt: skip
def test_per_split_arguments_that_do_not_pair_up_are_an_error(argv, message):
    from amc.evaluate import split_tasks

    with pytest.raises(AmcError, match=f"^{message}"):
        split_tasks(_parsed("--records", "a.jsonl", "b.jsonl", "--benchmark", "flickr30k", *argv))


def test_proposals_and_results_files_are_checked(tmp_path):
    from amc.evaluate import _load_proposals
    from amc.io import DataError

    assert _load_proposals(None) == {}
    path = tmp_path / "proposals.json"
    path.write_text(json.dumps({"7": [[1, 2, 3, 4, 0.9, 5]], 8: [[0, 0, 1, 1]], "9": [[0, 0, 2, 2, "dog"]]}))
    assert _load_proposals(str(path)) == {
        "7": [[1.0, 2.0, 3.0, 4.0]],
        "8": [[0.0, 0.0, 1.0, 1.0]],
        "9": [[0.0, 0.0, 2.0, 2.0]],  # what follows x, y, w, h (a score, a label) is not read
    }
    path.write_text("[[1, 2, 3, 4]]")
    with pytest.raises(DataError, match="proposals.json: expected a mapping image_id -> list of"):
        _load_proposals(str(path))
    path.write_text(json.dumps({"summary": {}}))
    with pytest.raises(DataError, match="proposals.json: result format None, this version reads"):
        read_result(path)


def test_a_vocabulary_of_another_size_or_a_missing_checkpoint_stops_before_evaluating(
    tmp_path, ci_data, random_checkpoint, caplog
):
    out = tmp_path / "out.json"
    small = tmp_path / "vocab.txt"
    small.write_text("\n".join(PIECES_VOCAB) + "\n")
    assert evaluate_flickr(ci_data.flickr_test, random_checkpoint, small, out) == 2
    assert "vocab.txt: 7 tokens, but" in caplog.text and "declares vocab_size 512" in caplog.text
    assert evaluate_flickr(ci_data.flickr_test, tmp_path / "none.pt", ci_data.vocab, out) == 2
    assert "none.pt: checkpoint not found" in caplog.text and not out.exists()


def test_the_batching_options_reach_the_evaluation(tmp_path, ci_data, random_checkpoint, monkeypatch):
    import amc.evaluate

    seen, real = [], amc.evaluate.evaluate
    monkeypatch.setattr(amc.evaluate, "evaluate", lambda *a, **k: seen.append(k) or real(*a, **k))
    args = ["--limit", "2", "--images-per-batch", "2", "--phrases-per-batch", "7"]
    assert (
        evaluate_flickr(ci_data.flickr_test, random_checkpoint, ci_data.vocab, tmp_path / "o.json", *args)
        == 0
    )
    ((kwargs),) = seen
    assert (kwargs["images_per_batch"], kwargs["phrases_per_batch"], kwargs["num_workers"]) == (2, 7, 0)
    assert kwargs["on_heatmap"] is None  # no --heatmaps: no map kept


def test_the_code_version_names_the_commit_when_there_is_one(monkeypatch, tmp_path):
    import subprocess

    import amc
    from amc.evaluate import _code_version

    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=Path(amc.__file__).parent, capture_output=True, text=True
    )
    _code_version.cache_clear()  # one git call per process: each case below asks again
    version = _code_version()
    if head.returncode == 0:  # a git checkout (the suite's own): "amc 0.1.0 (<short sha>)"
        short = version.removeprefix(f"amc {amc.__version__} (").removesuffix(")")
        assert version == f"amc {amc.__version__} ({short})" and len(short) >= 7
        assert head.stdout.strip().startswith(short)
    monkeypatch.chdir(tmp_path)  # the commit of the package's folder, not of the working folder
    _code_version.cache_clear()
    assert _code_version() == version

    def no_git(*args, **kwargs):
        raise FileNotFoundError("git")

    monkeypatch.setattr(subprocess, "run", no_git)
    _code_version.cache_clear()
    assert _code_version() == f"amc {amc.__version__}"  # an installed copy without git
    _code_version.cache_clear()  # later tests see the checkout's version again


def test_the_energy_of_no_cases_is_zero():
    from amc.evaluate import energy_summary

    assert energy_summary([]) == {"energy": 0.0, "energy_undefined": 0}


@pytest.mark.parametrize("option", ["--model-config", "--vocab", "--proposals", "--heatmaps"])
def test_an_output_onto_an_input_is_refused_naming_both(tmp_path, ci_data, random_checkpoint, option, caplog):
    files = {"--model-config": tmp_path / "model.yaml", "--vocab": tmp_path / "vocab.txt"}
    files["--model-config"].write_text(Path(TINY_MODEL).read_text())
    vocab = Path(ci_data.vocab)
    files["--vocab"].write_text((vocab / "vocab.txt" if vocab.is_dir() else vocab).read_text())
    proposals = tmp_path / "proposals.json"
    proposals.write_text("{}")
    argv = ["evaluate", "--checkpoint", random_checkpoint, "--records", ci_data.flickr_test,
            "--benchmark", "flickr30k", "--split", "test", "--proposals", proposals,
            *(str(a) for pair in files.items() for a in pair)]  # fmt: skip
    if option == "--heatmaps":  # two outputs
        argv += ["--out", tmp_path / "r.json", "--heatmaps", tmp_path / "r.json"]
        message = f"--heatmaps {tmp_path / 'r.json'}: is also --out (flickr30k test)"
    else:
        target = proposals if option == "--proposals" else files[option]
        argv += ["--out", target]
        message = f"--out (flickr30k test) {target}: is also {option}; an output never overwrites an input"
    with caplog.at_level("ERROR"):
        assert amc_main([str(a) for a in argv]) == 2
    assert message in caplog.text
