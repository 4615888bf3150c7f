"""GradCAM: against a slow reference written from the released evaluation, second order, batching, golden, CLI."""

from __future__ import annotations

import contextlib
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from model_fixtures import GOLDEN, TINY_YAML, tiny_batch, tiny_model

from amc.gradcam import gradcam_eval, gradcam_map, gradcam_train
from amc.models.checkpoint import export_albef, save_checkpoint


def slow_reference_gradcam(model, image_embeds, ids, mask):
    """One sample at a time, the released code's way: hook on P, backward, loops."""
    maps = []
    h, w = model.image_grid
    for i in range(ids.shape[0]):
        saved = {}
        text = model.encode_text(ids[i : i + 1], mask[i : i + 1])
        fused = model.fuse(
            text, mask[i : i + 1], image_embeds[i : i + 1].detach(), capture_cross_attention=True
        )
        probs = fused.cross_attention
        probs.register_hook(lambda grad, saved=saved: saved.update(grad=grad))
        model.zero_grad()
        model.itm_head(fused.hidden_states[:, 0])[0, 1].backward()
        grad = saved["grad"]
        heads, length = probs.shape[1], probs.shape[2]
        cam = torch.zeros(h, w, dtype=probs.dtype)
        for head in range(heads):
            for t in range(length):  # ALL positions: padding adds zeros but counts in the mean
                if mask[i, t]:
                    cam += (probs[0, head, t, 1:] * grad[0, head, t, 1:].clamp(min=0)).reshape(h, w).detach()
        maps.append(cam / (heads * length))
    model.zero_grad(set_to_none=True)
    return torch.stack(maps)


@pytest.fixture(scope="module")
def model64():
    return tiny_model().double()


def _embeds(model, images):
    with torch.no_grad():
        return model.encode_image(images.to(next(model.parameters()).dtype))


def test_gradcam_map_is_the_shared_core():
    generator = torch.Generator().manual_seed(0)
    probs = torch.rand(2, 3, 4, 1 + 6, generator=generator).softmax(-1)
    grad = torch.randn(2, 3, 4, 1 + 6, generator=generator)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    out = gradcam_map(probs, grad, mask, (2, 3))
    for b in range(2):
        expected = (
            sum(
                probs[b, hd, t, 1:] * grad[b, hd, t, 1:].clamp(min=0) * mask[b, t]
                for hd in range(3)
                for t in range(4)
            )
            / 12
        )
        torch.testing.assert_close(out[b], expected.reshape(2, 3))
    with pytest.raises(ValueError, match="not a square grid"):
        gradcam_map(probs, grad, mask)
    with pytest.raises(ValueError, match="does not hold"):
        gradcam_map(probs, grad, mask, (3, 3))


def test_eval_matches_slow_reference(model64):
    images, ids, mask = tiny_batch(model64)
    embeds = _embeds(model64, images)
    fast = gradcam_eval(model64, embeds, ids, mask)
    assert fast.shape == (3, 12, 12) and not fast.requires_grad
    reference_model = tiny_model(attention="reference").double()
    reference = slow_reference_gradcam(reference_model, _embeds(reference_model, images), ids, mask)
    assert reference.abs().max() > 0
    torch.testing.assert_close(fast, reference, rtol=1e-9, atol=1e-12)


def test_eval_touches_no_parameter_gradient():
    model = tiny_model()
    images, ids, mask = tiny_batch(model)
    image_embeds = model.encode_image(images)  # even WITH a graph back to the image encoder
    assert image_embeds.requires_grad
    gradcam_eval(model, image_embeds, ids, mask)
    assert [n for n, p in model.named_parameters() if p.grad is not None] == []
    assert not model.training


def test_batch_invariance_and_image_index(model64):
    images, ids, mask = tiny_batch(model64)
    embeds = _embeds(model64, images)
    batched = gradcam_eval(model64, embeds, ids, mask)
    length = ids.shape[1]
    for i in range(3):
        n = int(mask[i].sum())
        alone = gradcam_eval(model64, embeds[i : i + 1], ids[i : i + 1, :n], mask[i : i + 1, :n])[0]
        # The mean runs over ALL (padded) positions: padding only rescales by n / L.
        torch.testing.assert_close(batched[i], alone * n / length, rtol=1e-9, atol=1e-12)
    # One image serving several phrases.
    index = torch.tensor([2, 0, 2])
    shared = gradcam_eval(model64, embeds, ids, mask, image_index=index)
    torch.testing.assert_close(shared, gradcam_eval(model64, embeds[index], ids, mask))


def test_fuse_with_image_index_projects_each_image_once_and_equals_the_gathered_images(model64):
    images, ids, mask = tiny_batch(model64)
    embeds = _embeds(model64, images)
    index = torch.tensor([1, 1, 0, 2, 1])
    ids, mask = ids[[0, 1, 2, 0, 1]], mask[[0, 1, 2, 0, 1]]
    with torch.no_grad():
        text = model64.encode_text(ids, mask)
        shared = model64.fuse(text, mask, embeds, capture_cross_attention=True, image_index=index)
        gathered = model64.fuse(text, mask, embeds[index], capture_cross_attention=True)
    torch.testing.assert_close(shared.hidden_states, gathered.hidden_states, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(shared.cross_attention, gathered.cross_attention, rtol=1e-12, atol=1e-12)
    # keys are projected from the 3 images, not from 5 gathered copies
    rows = []
    layer = model64.text_encoder.bert.encoder.layer[model64.fusion_layer].crossattention.self.key
    handle = layer.register_forward_hook(lambda module, args, out: rows.append(args[0].shape[0]))
    with torch.no_grad():
        model64.fuse(text, mask, embeds, image_index=index)
    handle.remove()
    assert rows == [3]
    with pytest.raises(ValueError, match="image_index of shape"):
        model64.fuse(text, mask, embeds, image_index=index[:2])


def test_last_fusion_layer_only_has_a_gradient_on_cls():
    # Why the tiny model takes GradCAM one layer before the last (docs/model.md, "GradCAM").
    model = tiny_model(gradcam_layer=2).double()
    images, ids, mask = tiny_batch(model)
    fused = model.fuse(
        model.encode_text(ids, mask), mask, _embeds(model, images), capture_cross_attention=True
    )
    (grad,) = torch.autograd.grad(
        model.itm_logits(fused.hidden_states[:, 0])[:, 1].sum(), fused.cross_attention
    )
    assert grad[:, :, 0].abs().sum() > 0 and grad[:, :, 1:].abs().sum() == 0


def _train_maps(model, images, ids, mask, out_size=32):
    fused = model.fuse(
        model.encode_text(ids, mask), mask, model.encode_image(images), capture_cross_attention=True
    )
    score = model.itm_logits(fused.hidden_states[:, 0])[:, 1]
    return gradcam_train(fused.cross_attention, score, mask, model.image_grid, out_size), fused, score


def test_train_recipe_steps(model64):
    images, ids, mask = tiny_batch(model64)
    maps, fused, score = _train_maps(model64, images.double(), ids, mask)
    assert maps.shape == (3, 32, 32) and maps.requires_grad
    (grad,) = torch.autograd.grad(score.sum(), fused.cross_attention, retain_graph=True)
    cam = gradcam_map(fused.cross_attention, grad, mask).relu()
    for b in range(3):
        a = cam[b].clone()
        a -= a.min()
        a /= a.max() + 1e-7
        expected = F.interpolate(a[None, None], size=(32, 32), mode="bilinear", align_corners=False)[0, 0]
        torch.testing.assert_close(maps[b], expected)
        assert maps[b].min() >= 0 and maps[b].max() <= 1


@contextlib.contextmanager
def _as_inputs(model, names, values):
    """Swap parameters for given tensors (what torch.func.functional_call does for forward())."""
    modules = []
    for name, value in zip(names, values, strict=True):
        module_name, _, attr = name.rpartition(".")
        module = model.get_submodule(module_name)
        modules.append((module, attr, getattr(module, attr)))
        delattr(module, attr)
        setattr(module, attr, value)
    try:
        yield
    finally:
        for module, attr, param in modules:
            delattr(module, attr)
            setattr(module, attr, param)


def test_second_order_gradient_is_exact():
    """gradcheck (float64) of a loss on gradcam_train's map w.r.t. parameters downstream of P.

    The ITM head and the last fusion layer only act on the map through G = ds/dP, i.e. through
    the second-order path that create_graph=True keeps.
    """
    model = tiny_model().double()
    images, ids, mask = tiny_batch(model, batch=2, lengths=(5, 3))
    images = images.double()
    with torch.no_grad():
        image_embeds = model.encode_image(images)
        text_embeds = model.encode_text(ids, mask)
    names = ["itm_head.weight", "text_encoder.bert.encoder.layer.2.attention.output.dense.bias"]
    weights = torch.rand(2, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(3))

    def loss(itm_weight, dense_bias):
        with _as_inputs(model, names, (itm_weight, dense_bias)):
            fused = model.fuse(text_embeds, mask, image_embeds, capture_cross_attention=True)
            score = model.itm_logits(fused.hidden_states[:, 0])[:, 1]
            maps = gradcam_train(fused.cross_attention, score, mask, model.image_grid, 8)
        return (maps * weights).sum()

    inputs = [model.get_parameter(n).detach().clone().requires_grad_(True) for n in names]
    (g_itm, g_bias) = torch.autograd.grad(loss(*inputs), inputs)
    assert g_itm.abs().sum() > 0 and g_bias.abs().sum() > 0
    assert torch.autograd.gradcheck(loss, inputs, eps=1e-6, atol=1e-6, rtol=1e-4, fast_mode=True)


def test_golden_gradcam_of_tiny_model():
    model = tiny_model()
    images, ids, mask = tiny_batch(model)
    with torch.no_grad():
        embeds = model.encode_image(images)
    outputs = {"gradcam.eval": gradcam_eval(model, embeds, ids, mask)}
    outputs["gradcam.train"] = _train_maps(model, images, ids, mask, out_size=16)[0].detach()
    path = GOLDEN / "tiny_golden.pt"
    if os.environ.get("AMC_REGEN_GOLDEN"):
        stored = torch.load(path) if path.exists() else {}
        stored.update(outputs)
        torch.save(stored, path)
    golden = torch.load(path)
    for key, value in outputs.items():
        torch.testing.assert_close(value, golden[key], rtol=1e-4, atol=1e-7, msg=key)


# ----------------------------------------------------------------------- CLI


def _write_vocab(path, size=512):
    lines = [
        "[PAD]",
        "[UNK]",
        "[CLS]",
        "[SEP]",
        "[MASK]",
        "red",
        "circle",
        "left",
        "of",
        "the",
        "blue",
        "square",
    ]
    lines += [f"w{i}" for i in range(size - len(lines))]
    path.write_text("\n".join(lines) + "\n")


def test_cli_writes_eval_map_and_overlay(tmp_path):
    from PIL import Image

    from amc.cli import main
    from amc.evaluate import EvalInputs
    from amc.gradcam_cli import load_image
    from amc.models.tokenizer import load_tokenizer, pre_caption

    model = tiny_model()
    save_checkpoint(tmp_path / "ckpt.pt", model)
    torch.save(export_albef(model), tmp_path / "ALBEF_tiny.pth")
    _write_vocab(tmp_path / "vocab.txt")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (90, 120, 3), dtype=np.uint8)).save(tmp_path / "img.png")
    config = str(TINY_YAML)
    text = "The red circle, left of the BLUE square!"
    common = ["gradcam", "--model-config", config, "--vocab", str(tmp_path / "vocab.txt")]
    common += ["--image", str(tmp_path / "img.png"), "--text", text]
    rc = main(
        common
        + [
            "--checkpoint",
            str(tmp_path / "ckpt.pt"),
            "--output",
            str(tmp_path / "heat.npy"),
            "--overlay",
            str(tmp_path / "overlay.png"),
        ]
    )
    assert rc == 0
    heat = np.load(tmp_path / "heat.npy")
    assert heat.dtype == np.float32 and heat.shape == (12, 12)
    with Image.open(tmp_path / "overlay.png") as overlay:
        assert overlay.format == "PNG"

    tokens = load_tokenizer(tmp_path / "vocab.txt")([pre_caption(text, 30)], max_length=64)
    assert tokens.input_ids.shape[1] == 1 + 8
    _, pixels = load_image(tmp_path / "img.png", EvalInputs.for_benchmark(None, 96))
    expected = gradcam_eval(model, _embeds(model, pixels[None]), tokens.input_ids, tokens.attention_mask)[0]
    np.testing.assert_allclose(heat, expected.numpy(), rtol=1e-5, atol=1e-8)

    # ALBEF's layout loads directly; another resolution gives another grid.
    rc = main(
        common
        + [
            "--checkpoint",
            str(tmp_path / "ALBEF_tiny.pth"),
            "--output",
            str(tmp_path / "h2.npy"),
            "--image-res",
            "128",
        ]
    )
    assert rc == 0 and np.load(tmp_path / "h2.npy").shape == (16, 16)
    # User errors are reported, not raised.
    _write_vocab(tmp_path / "vocab.txt", size=300)
    assert (
        main(common + ["--checkpoint", str(tmp_path / "ckpt.pt"), "--output", str(tmp_path / "h3.npy")]) == 2
    )
    assert not (tmp_path / "h3.npy").exists()


def test_eval_accepts_image_embeds_made_under_inference_mode(model64):
    images, ids, mask = tiny_batch(model64)
    with torch.inference_mode():
        embeds = model64.encode_image(images.double())
    torch.testing.assert_close(
        gradcam_eval(model64, embeds, ids, mask), gradcam_eval(model64, embeds.clone(), ids, mask)
    )
    with torch.inference_mode(), pytest.raises(RuntimeError, match="not inference_mode"):
        gradcam_eval(model64, embeds, ids, mask)
