"""Explainers (amc.explainers): parsing, the model's capture, every map against a slow reference
written here, the hand-computed rollout, and one pass / one backward for all of them."""

from __future__ import annotations

import pytest
import torch
from model_fixtures import tiny_batch, tiny_config, tiny_model
from test_gradcam import slow_reference_gradcam

from amc.explainers import Explainer, attention_map, explain, parse_explainers, rollout_map
from amc.gradcam import gradcam_eval
from amc.io import AmcError

FUSION = (1, 2)  # the tiny model: 1 text-only layer, fusion layers 1 and 2, gradcam_layer 1


@pytest.fixture(scope="module")
def model64():
    return tiny_model().double()


def _embeds(model, images):
    with torch.no_grad():
        return model.encode_image(images.to(next(model.parameters()).dtype))


# ------------------------------------------------------------------ names and options


def test_parse_and_resolve_names_and_layers():
    config = tiny_config()
    assert Explainer.parse("gradcam") == Explainer("gradcam")
    assert Explainer.parse("gradcam").resolve(config) == Explainer("gradcam", 1)  # the config's gradcam_layer
    assert Explainer.parse("gradcam:layer=2").resolve(config) == Explainer("gradcam", 2)
    assert Explainer.parse("attention").resolve(config).to_dict() == {"name": "attention", "layer": 1}
    assert Explainer.parse("gradcam-mean").resolve(config).to_dict() == {"name": "gradcam-mean"}
    assert [e.slug for e in parse_explainers(["gradcam:layer=2", "attention", "rollout"], config)] == [
        "gradcam-layer2",
        "attention-layer1",
        "rollout",
    ]
    # the default and its explicit layer are one explainer
    assert parse_explainers(["gradcam", "gradcam:layer=1", "gradcam-mean"], config) == [
        Explainer("gradcam", 1),
        Explainer("gradcam-mean"),
    ]
    assert str(Explainer("attention", 2)) == "attention:layer=2"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "gradcam:layer=0",
            r"layer 0 is not a fusion layer of this model; only layers 1..2 have cross-attention",
        ),
        ("attention:layer=3", r"layer 3 is not a fusion layer"),
        ("gradcm", r"unknown name 'gradcm' \(one of gradcam, attention, gradcam-mean, rollout\)"),
        ("rollout:layer=1", "rollout takes no options"),
        ("gradcam:head=1", "unknown option 'head=1'"),
        ("gradcam:layer=x", "layer must be an integer"),
    ],
)
def test_bad_explainers_are_clear_errors(text, message):
    with pytest.raises(AmcError, match=message):
        Explainer.parse(text).resolve(tiny_config())


# ------------------------------------------------------------------ the model's capture


def test_fuse_captures_self_and_cross_attention_of_the_asked_layers():
    model = tiny_model()
    images, ids, mask = tiny_batch(model)
    image_embeds = _embeds(model, images)
    text = model.encode_text(ids, mask)
    with torch.no_grad():
        plain = model.fuse(text, mask, image_embeds)
        fused = model.fuse(text, mask, image_embeds, capture_layers=FUSION, capture_self_attention=True)
    assert plain.cross_attentions == {} and plain.self_attentions == {}  # the default path captures nothing
    torch.testing.assert_close(fused.hidden_states, plain.hidden_states)
    assert sorted(fused.cross_attentions) == sorted(fused.self_attentions) == list(FUSION)
    # Recompute every captured probability from the layer's inputs, by hand.
    inputs = {}
    handles = []
    for index in FUSION:
        layer = model.text_encoder.bert.encoder.layer[index]
        for name, module in (("self", layer.attention), ("cross", layer.crossattention)):
            handles.append(
                module.register_forward_pre_hook(
                    lambda m, args, key=(name, index): inputs.update({key: args[0]})
                )
            )
    with torch.no_grad():
        model.fuse(text, mask, image_embeds)
    for handle in handles:
        handle.remove()
    bias = (1.0 - mask[:, None, None, :].float()) * -10000.0
    for index in FUSION:
        layer = model.text_encoder.bert.encoder.layer[index]
        for name, module, keys, add in (
            ("self", layer.attention.self, inputs[("self", index)], bias),
            ("cross", layer.crossattention.self, image_embeds, 0.0),
        ):
            q = module.query(inputs[(name, index)]).view(3, -1, 4, 16).transpose(1, 2)
            k = module.key(keys).view(3, -1, 4, 16).transpose(1, 2)
            expected = (q @ k.transpose(-1, -2) / 4.0 + add).softmax(-1)
            captured = (fused.self_attentions if name == "self" else fused.cross_attentions)[index]
            torch.testing.assert_close(captured, expected, msg=f"{name} layer {index}")
    with pytest.raises(ValueError, match=r"layer\(s\) \[0\] are not fusion layers \(1..2\)"):
        model.fuse(text, mask, image_embeds, capture_layers=[0])


# ------------------------------------------------------------------ slow references


def slow_attention(model, image_embeds, ids, mask, layer):
    """Layer ``layer``'s cross-attention, no gradient, one phrase at a time: a model whose
    gradcam_layer is ``layer`` captures it the default way; loops over heads and positions."""
    reference = tiny_model(gradcam_layer=layer, attention="reference").double()
    h, w = model.image_grid
    maps = []
    with torch.no_grad():
        for i in range(ids.shape[0]):
            text = reference.encode_text(ids[i : i + 1], mask[i : i + 1])
            probs = reference.fuse(
                text, mask[i : i + 1], image_embeds[i : i + 1], capture_cross_attention=True
            ).cross_attention[0]
            heads, length = probs.shape[0], probs.shape[1]
            cam = torch.zeros(h, w, dtype=probs.dtype)
            for head in range(heads):
                for t in range(length):
                    if mask[i, t]:
                        cam += probs[head, t, 1:].reshape(h, w)
            maps.append(cam / (heads * length))
    return torch.stack(maps)


def slow_rollout(model, image_embeds, ids, mask):
    """Rollout one phrase at a time, rows and columns in Python loops (the docs' definition)."""
    h, w = model.image_grid
    maps = []
    with torch.no_grad():
        for i in range(ids.shape[0]):
            n = int(mask[i].sum())  # the phrase without padding
            text = model.encode_text(ids[i : i + 1, :n], mask[i : i + 1, :n])
            fused = model.fuse(
                text,
                mask[i : i + 1, :n],
                image_embeds[i : i + 1],
                capture_layers=FUSION,
                capture_self_attention=True,
            )
            images = fused.cross_attentions[FUSION[0]].shape[-1]
            relevance = [[0.0] * images for _ in range(n)]
            for layer in FUSION:
                s = fused.self_attentions[layer][0].mean(dim=0).tolist()
                c = fused.cross_attentions[layer][0].mean(dim=0).tolist()
                mixed = [
                    [
                        0.5 * relevance[q][j] + 0.5 * sum(s[q][k] * relevance[k][j] for k in range(n))
                        for j in range(images)
                    ]
                    for q in range(n)
                ]
                relevance = [[0.5 * mixed[q][j] + 0.5 * c[q][j] for j in range(images)] for q in range(n)]
            maps.append(torch.tensor(relevance[0][1:], dtype=torch.float64).reshape(h, w))
    return torch.stack(maps)


def test_every_explainer_matches_its_slow_reference(model64):
    images, ids, mask = tiny_batch(model64)
    embeds = _embeds(model64, images)
    explainers = parse_explainers(
        [
            "gradcam:layer=1",
            "gradcam:layer=2",
            "attention:layer=1",
            "attention:layer=2",
            "gradcam-mean",
            "rollout",
        ],
        model64.config,
    )
    maps = explain(model64, embeds, ids, mask, explainers)
    gradcam = {}
    for layer in FUSION:
        # GradCAM at layer K: the paper's map of the same weights with gradcam_layer = K.
        reference = tiny_model(gradcam_layer=layer, attention="reference").double()
        gradcam[layer] = slow_reference_gradcam(reference, _embeds(reference, images), ids, mask)
        assert gradcam[layer].abs().max() > 0
        torch.testing.assert_close(maps[Explainer("gradcam", layer)], gradcam[layer], rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(
            maps[Explainer("attention", layer)],
            slow_attention(model64, embeds, ids, mask, layer),
            rtol=1e-9,
            atol=1e-12,
        )
    torch.testing.assert_close(
        maps[Explainer("gradcam-mean")], (gradcam[1] + gradcam[2]) / 2, rtol=1e-9, atol=1e-12
    )
    torch.testing.assert_close(
        maps[Explainer("rollout")], slow_rollout(model64, embeds, ids, mask), rtol=1e-9, atol=1e-12
    )
    # the maps differ from one another: each explainer reads its own thing
    values = [m for m in maps.values()]
    assert all(not torch.allclose(a, b) for i, a in enumerate(values) for b in values[i + 1 :])
    assert all(not m.requires_grad and m.shape == (3, 12, 12) for m in values)


def test_default_gradcam_explainer_is_the_papers_map(model64):
    images, ids, mask = tiny_batch(model64)
    embeds = _embeds(model64, images)
    index = torch.tensor([2, 0, 2])
    default = gradcam_eval(model64, embeds, ids, mask, image_index=index)
    (explained,) = explain(model64, embeds, ids, mask, [Explainer("gradcam", 1)], image_index=index).values()
    assert torch.equal(explained, default)  # the same pass: bit for bit
    # with every other explainer in the same pass, still the same map, and image_index as gathering
    everything = parse_explainers(
        ["gradcam", "gradcam:layer=2", "attention", "gradcam-mean", "rollout"], model64.config
    )
    shared = explain(model64, embeds, ids, mask, everything, image_index=index)
    gathered = explain(model64, embeds[index], ids, mask, everything)
    assert torch.equal(shared[Explainer("gradcam", 1)], default)
    for explainer in everything:
        torch.testing.assert_close(shared[explainer], gathered[explainer], rtol=1e-12, atol=1e-14)


def test_padding_changes_no_map_but_the_mean_over_positions(model64):
    images, ids, mask = tiny_batch(model64)
    embeds = _embeds(model64, images)
    explainers = parse_explainers(["attention:layer=2", "gradcam-mean", "rollout"], model64.config)
    batched = explain(model64, embeds, ids, mask, explainers)
    length = ids.shape[1]
    for i in range(3):
        n = int(mask[i].sum())
        alone = explain(model64, embeds[i : i + 1], ids[i : i + 1, :n], mask[i : i + 1, :n], explainers)
        for explainer in explainers:
            # attention and GradCAM average over ALL positions (padding rescales by n / L); rollout reads [CLS]
            scale = 1.0 if explainer.name == "rollout" else n / length
            torch.testing.assert_close(
                batched[explainer][i], alone[explainer][0] * scale, rtol=1e-9, atol=1e-12
            )


def test_rollout_of_a_hand_built_attention_set():
    """Two fusion layers, two heads, [CLS] and one word, an image of a class token and 1 x 2 patches.

    Layer 1: self-attention heads I and the swap (mean: all 1/2); cross-attention mean rows
    [CLS] (0, 1, 0), word (0, 1/2, 1/2). R starts at 0, self-attention keeps 0, cross-attention
    gives R = C / 2: [CLS] (0, 1/2, 0), word (0, 1/4, 1/4).
    Layer 2: self-attention [CLS] (1/2, 1/2), word (0, 1): (I + S) / 2 makes [CLS] 3/4 itself and
    1/4 the word: (0, 3/8 + 1/16, 1/16) = (0, 7/16, 1/16). Cross-attention heads [CLS] (0.2, 0, 0.8)
    and (0, 0.2, 0.8), mean (1/10, 1/10, 8/10): R[CLS] = (0, 7/32, 1/32) + (1/20, 1/20, 2/5)
    = (1/20, 43/160, 69/160). The map drops the class token: (43/160, 69/160) = (0.26875, 0.43125).
    """
    eye, swap = [[1.0, 0.0], [0.0, 1.0]], [[0.0, 1.0], [1.0, 0.0]]
    self_1 = torch.tensor([[eye, swap]])
    cross_1 = torch.tensor([[[[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]], [[0.0, 1.0, 0.0], [0.0, 1.0, 0.0]]]])
    self_2 = torch.tensor([[[[0.5, 0.5], [0.0, 1.0]]] * 2])
    cross_2 = torch.tensor([[[[0.2, 0.0, 0.8], [1.0, 0.0, 0.0]], [[0.0, 0.2, 0.8], [1.0, 0.0, 0.0]]]])
    result = rollout_map([self_1, self_2], [cross_1, cross_2], grid=(1, 2))
    torch.testing.assert_close(result, torch.tensor([[[43 / 160, 69 / 160]]]))
    # one layer only: R[CLS] = C[CLS] / 2 = (0, 1/2, 0)
    torch.testing.assert_close(rollout_map([self_1], [cross_1], grid=(1, 2)), torch.tensor([[[0.5, 0.0]]]))
    with pytest.raises(ValueError, match="one self-attention and one cross-attention per fusion layer"):
        rollout_map([self_1], [cross_1, cross_2], grid=(1, 2))


def test_attention_map_is_gradcams_reduction_of_p_alone():
    generator = torch.Generator().manual_seed(0)
    probs = torch.rand(2, 3, 4, 1 + 6, generator=generator).softmax(-1)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    out = attention_map(probs, mask, (2, 3))
    for b in range(2):
        expected = sum(probs[b, hd, t, 1:] * mask[b, t] for hd in range(3) for t in range(4)) / 12
        torch.testing.assert_close(out[b], expected.reshape(2, 3))


# ------------------------------------------------------------------ efficiency


def test_gradient_free_explainers_run_no_backward(model64, monkeypatch):
    images, ids, mask = tiny_batch(model64)
    embeds = _embeds(model64, images)

    def no_backward(*args, **kwargs):
        raise AssertionError("a gradient-free explainer ran a backward pass")

    monkeypatch.setattr(torch.autograd, "grad", no_backward)
    grad_modes = []
    handle = model64.text_encoder.bert.encoder.layer[1].register_forward_hook(
        lambda *args: grad_modes.append(torch.is_grad_enabled())
    )
    maps = explain(model64, embeds, ids, mask, parse_explainers(["attention", "rollout"], model64.config))
    handle.remove()
    assert grad_modes == [False]  # the fusion pass itself ran under no_grad
    assert all(not m.requires_grad for m in maps.values())


def test_gradient_explainers_share_one_backward(model64, monkeypatch):
    images, ids, mask = tiny_batch(model64)
    embeds = _embeds(model64, images)
    calls = []
    grad = torch.autograd.grad

    def counting(outputs, inputs, *args, **kwargs):
        calls.append(len(inputs))
        return grad(outputs, inputs, *args, **kwargs)

    monkeypatch.setattr(torch.autograd, "grad", counting)
    every = parse_explainers(
        ["gradcam:layer=1", "gradcam:layer=2", "gradcam-mean", "attention", "rollout"], model64.config
    )
    explain(model64, embeds, ids, mask, every)
    assert calls == [2]  # one backward pass, w.r.t. both fusion layers' cross-attention
    assert [n for n, p in model64.named_parameters() if p.grad is not None] == []
