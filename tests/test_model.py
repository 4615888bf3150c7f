"""ALBEF model: configuration, ALBEF's exact state_dict naming, attention paths, momentum, queues."""

from __future__ import annotations

import json
import os
import re

import pytest
import torch

from amc.io import AmcError
from amc.models import ALBEF, ModelConfig
from amc.models.albef import interpolate_pos_embed
from amc.models.bert import MASK_VALUE
from tests.helpers import (
    BASE_MODEL,
    GOLDEN,
    REPO,
    read_key_list,
    tiny_batch,
    tiny_config,
    tiny_model,
)

# ------------------------------------------------------------------ config


@pytest.mark.parametrize("name", ["albef-base", "albef-4m", "tiny"])
def test_config_files_load_and_round_trip(name):
    config = ModelConfig.from_file(REPO / "config" / "models" / f"{name}.yaml")
    assert ModelConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


def test_albef_configs_match_the_paper_model():
    base = ModelConfig.from_file(BASE_MODEL)
    assert (base.image_res, base.embed_dim, base.gradcam_layer, base.queue_size) == (256, 256, 8, 65536)
    assert (base.vision.patch_size, base.vision.width, base.vision.depth, base.vision.heads) == (
        16,
        768,
        12,
        12,
    )
    assert (base.text.vocab_size, base.text.fusion_layer, base.text.num_hidden_layers) == (30522, 6, 12)
    assert base.image_grid == (16, 16)
    four_m = ModelConfig.from_file(REPO / "config" / "models" / "albef-4m.yaml")
    assert four_m.architecture_dict() == base.architecture_dict()
    tiny = tiny_config()
    assert tiny.image_grid == (12, 12)
    assert tiny.text.fusion_layer == 1 and tiny.gradcam_layer == 1 and tiny.text.num_hidden_layers == 3
    assert tiny.queue_size % 64 == 0


def test_unknown_key_names_file_and_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(BASE_MODEL.read_text().replace("fusion_layer: 6", "fusion_layer: 6\n  fusion_layers: 6"))
    with pytest.raises(AmcError, match=r"bad\.yaml.*unknown key text\.fusion_layers"):
        ModelConfig.from_file(path)
    path.write_text("image_res: 256\nimage_size: 3\n")
    with pytest.raises(AmcError, match=r"bad\.yaml.*unknown key image_size"):
        ModelConfig.from_file(path)


def test_config_bert_json_is_accepted_verbatim(tmp_path):
    config_bert = {
        "architectures": ["BertForMaskedLM"],
        "attention_probs_dropout_prob": 0.1,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "hidden_size": 768,
        "initializer_range": 0.02,
        "intermediate_size": 3072,
        "layer_norm_eps": 1e-12,
        "max_position_embeddings": 512,
        "model_type": "bert",
        "num_attention_heads": 12,
        "num_hidden_layers": 12,
        "pad_token_id": 0,
        "type_vocab_size": 2,
        "vocab_size": 30522,
        "fusion_layer": 6,
        "encoder_width": 768,
    }
    path = tmp_path / "model.json"
    path.write_text(json.dumps({"text": config_bert}))
    assert ModelConfig.from_file(path).text == ModelConfig.from_file(BASE_MODEL).text


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"gradcam_layer": 5}, "gradcam_layer 5 must be a fusion layer"),
        ({"gradcam_layer": 12}, "gradcam_layer 12 must be a fusion layer"),
        ({"image_res": 250}, "not a multiple of patch_size"),
        ({"attention": "flash"}, "attention"),
    ],
)
def test_config_validation(changes, message):
    with pytest.raises(AmcError, match=message):
        ModelConfig.from_file(BASE_MODEL).replace(**changes)


# ------------------------------------------------------------- state_dict naming


def _meta_model(config: ModelConfig) -> ALBEF:
    with torch.device("meta"):
        return ALBEF(config)


def test_full_size_state_dict_is_exactly_albef_pretrain_checkpoint():
    rows = read_key_list("albef_checkpoint_keys_dtypes.txt")
    state = _meta_model(ModelConfig.from_file(BASE_MODEL)).state_dict()
    assert list(state) == [name for name, _, _ in rows]  # same names, same order
    for name, shape, dtype in rows:
        assert tuple(state[name].shape) == shape, name
        assert str(state[name].dtype) == f"torch.{dtype}", name


def test_tiny_state_dict_has_the_same_naming_scheme():
    def scheme(names):
        return {re.sub(r"\.\d+\.", ".N.", n) for n in names}

    full = scheme(name for name, _, _ in read_key_list("albef_checkpoint_keys_dtypes.txt"))
    assert scheme(tiny_model().state_dict()) == full


def test_fusion_layers_have_cross_attention_and_text_layers_do_not():
    model = tiny_model()
    layers = model.text_encoder.bert.encoder.layer
    assert [hasattr(layer, "crossattention") for layer in layers] == [False, True, True]


def test_mlm_decoder_is_tied_to_word_embeddings():
    model = tiny_model()
    for encoder in (model.text_encoder, model.text_encoder_m):
        head = encoder.cls.predictions
        assert head.decoder.weight is encoder.bert.embeddings.word_embeddings.weight
        assert head.decoder.bias is head.bias
    # Tied weights are counted once; momentum copies do not train.
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert all(not p.requires_grad for p in model.text_encoder_m.parameters())
    assert id(model.text_encoder.cls.predictions.decoder.weight) in trainable


# ------------------------------------------------------------------- forward


def test_shapes_and_feature_normalisation():
    model = tiny_model()
    images, ids, mask = tiny_batch(model)
    image_embeds = model.encode_image(images)
    assert image_embeds.shape == (3, 1 + 144, 64)
    text_embeds = model.encode_text(ids, mask)
    assert text_embeds.shape == (3, ids.shape[1], 64)
    fused = model.fuse(text_embeds, mask, image_embeds)
    assert fused.hidden_states.shape == text_embeds.shape and fused.cross_attention is None
    assert model.itm_logits(fused.hidden_states[:, 0]).shape == (3, 2)
    assert model.mlm_logits(fused.hidden_states).shape == (3, ids.shape[1], 512)
    for feat in (model.image_feat(image_embeds), model.text_feat(text_embeds, momentum=True)):
        assert feat.shape == (3, 64)
        torch.testing.assert_close(feat.norm(dim=-1), torch.ones(3))
    assert model.encode_image_m(images).shape == image_embeds.shape
    assert model.encode_text_m(ids, mask).shape == text_embeds.shape


def test_captured_cross_attention_is_gradcam_layer_probabilities_in_the_graph():
    model = tiny_model()
    images, ids, mask = tiny_batch(model)
    with torch.no_grad():
        image_embeds = model.encode_image(images)
    fused = model.fuse(model.encode_text(ids, mask), mask, image_embeds, capture_cross_attention=True)
    probs = fused.cross_attention
    assert probs.shape == (3, 4, ids.shape[1], 145)
    torch.testing.assert_close(probs.sum(-1), torch.ones(probs.shape[:-1]))
    score = model.itm_logits(fused.hidden_states[:, 0])[:, 1].sum()
    (grad,) = torch.autograd.grad(score, probs)
    assert grad.shape == probs.shape and grad.abs().sum() > 0
    # Recompute layer gradcam_layer's cross-attention by hand from its inputs.
    captured = {}
    layer = model.text_encoder.bert.encoder.layer[model.gradcam_layer]
    handle = layer.crossattention.register_forward_pre_hook(lambda m, args: captured.update(x=args[0]))
    model.fuse(model.encode_text(ids, mask), mask, image_embeds)
    handle.remove()
    attn = layer.crossattention.self
    q = attn.query(captured["x"]).view(3, -1, 4, 16).transpose(1, 2)
    k = attn.key(image_embeds).view(3, -1, 4, 16).transpose(1, 2)
    torch.testing.assert_close(probs, (q @ k.transpose(-1, -2) / 4.0).softmax(-1))


def test_attention_layout_default_and_reference():
    model = tiny_model()
    impl = [layer.attention.self.implementation for layer in model.text_encoder.bert.encoder.layer]
    assert impl == ["sdpa", "eager", "eager"]  # gradcam_layer = 1 and after: eager
    assert all(block.attn.fused_attn for block in model.visual_encoder.blocks)
    model.set_attention("reference")
    impl = [layer.crossattention.self.implementation for layer in model.text_encoder.bert.encoder.layer[1:]]
    assert impl == ["eager", "eager"]
    assert not any(block.attn.fused_attn for block in model.visual_encoder.blocks)
    base = _meta_model(ModelConfig.from_file(BASE_MODEL))
    impl = [layer.attention.self.implementation for layer in base.text_encoder.bert.encoder.layer]
    assert impl == ["sdpa"] * 8 + ["eager"] * 4


def test_fast_and_reference_attention_agree():
    fast = tiny_model().double()
    reference = tiny_model(attention="reference").double()
    images, ids, mask = tiny_batch(fast)
    images = images.double()
    outputs = []
    for model in (fast, reference):
        image_embeds = model.encode_image(images)
        text_embeds = model.encode_text(ids, mask)
        fused = model.fuse(text_embeds, mask, image_embeds, capture_cross_attention=True)
        fused_m = model.fuse(model.encode_text_m(ids, mask), mask, image_embeds, momentum=True)
        outputs.append(
            [image_embeds, text_embeds, fused.hidden_states, fused.cross_attention, fused_m.hidden_states]
        )
    for a, b in zip(*outputs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)


def test_padding_does_not_change_real_tokens():
    model = tiny_model()
    images, ids, mask = tiny_batch(model)
    image_embeds = model.encode_image(images[:1])
    n = int(mask[0].sum())
    alone = model.fuse(model.encode_text(ids[:1, :n], mask[:1, :n]), mask[:1, :n], image_embeds).hidden_states
    padded = model.fuse(model.encode_text(ids[:1], mask[:1]), mask[:1], image_embeds).hidden_states
    torch.testing.assert_close(padded[:, :n], alone, rtol=1e-5, atol=1e-5)
    assert MASK_VALUE == -10000.0  # ALBEF's additive mask value


def test_resize_image_res_interpolates_like_albef():
    model = tiny_model()
    old = model.visual_encoder.pos_embed.detach().clone()
    model.resize_image_res(128)
    assert model.image_grid == (16, 16) and model.config.image_res == 128
    new = model.visual_encoder.pos_embed.detach()
    assert new.shape == (1, 257, 64)
    torch.testing.assert_close(new[:, :1], old[:, :1])  # class-token position kept
    patches = old[:, 1:].reshape(1, 12, 12, 64).permute(0, 3, 1, 2)
    expected = torch.nn.functional.interpolate(patches, size=(16, 16), mode="bicubic", align_corners=False)
    torch.testing.assert_close(new[:, 1:], expected.permute(0, 2, 3, 1).flatten(1, 2))
    torch.testing.assert_close(model.visual_encoder_m.pos_embed, model.visual_encoder.pos_embed)
    assert model.encode_image(torch.randn(1, 3, 128, 128)).shape == (1, 257, 64)
    assert interpolate_pos_embed(old, (12, 12)) is old


# ----------------------------------------------------------- momentum, queues


def test_copy_params_and_momentum_update():
    model = tiny_model()
    for online, momentum in model.model_pairs:
        for p, p_m in zip(online.parameters(), momentum.parameters(), strict=True):
            assert torch.equal(p, p_m) and not p_m.requires_grad
    before = model.vision_proj_m.weight.detach().clone()
    with torch.no_grad():
        model.vision_proj.weight.add_(1.0)
    model.momentum_update()
    expected = 0.995 * before + 0.005 * model.vision_proj.weight.detach()
    torch.testing.assert_close(model.vision_proj_m.weight.detach(), expected)


def test_dequeue_and_enqueue_wraps_and_checks_batch():
    model = tiny_model()
    assert model.queue_ptr.dtype == torch.int64
    torch.testing.assert_close(model.image_queue.norm(dim=0), torch.ones(1024))
    feats = torch.nn.functional.normalize(torch.randn(64, 64), dim=-1)
    for step in range(16):
        model.dequeue_and_enqueue(feats + step, feats - step)
    assert int(model.queue_ptr) == 0
    torch.testing.assert_close(model.image_queue[:, 960:], (feats + 15).T)
    torch.testing.assert_close(model.text_queue[:, :64], (feats - 0).T)
    # A batch that does not divide the queue wraps around its end (AMC's released behaviour).
    model.queue_ptr[0] = 1000
    model.dequeue_and_enqueue(feats[:48] + 100, feats[:48] - 100)
    assert int(model.queue_ptr) == (1000 + 48) % 1024
    torch.testing.assert_close(model.image_queue[:, 1000:], (feats[:24] + 100).T)
    torch.testing.assert_close(model.image_queue[:, :24], (feats[24:48] + 100).T)
    with pytest.raises(AmcError, match="larger than the queue"):
        model.dequeue_and_enqueue(torch.zeros(2048, 64), torch.zeros(2048, 64))


def test_train_step_backward_reaches_all_online_trainable_parameters():
    model = tiny_model().train()
    images, ids, mask = tiny_batch(model)
    image_embeds = model.encode_image(images)
    text_embeds = model.encode_text(ids, mask)
    fused = model.fuse(text_embeds, mask, image_embeds)
    loss = (
        model.itm_logits(fused.hidden_states[:, 0]).sum()
        + model.mlm_logits(fused.hidden_states).logsumexp(-1).mean()
        + (model.image_feat(image_embeds) @ model.text_feat(text_embeds).T / model.temp).sum()
    )
    loss.backward()
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert no_grad == []
    assert all(p.grad is None for p in model.visual_encoder_m.parameters())


# ------------------------------------------------------------------- golden


def _golden_outputs():
    model = tiny_model()
    images, ids, mask = tiny_batch(model)
    with torch.no_grad():
        image_embeds = model.encode_image(images)
        text_embeds = model.encode_text(ids, mask)
        fused = model.fuse(text_embeds, mask, image_embeds)
        return {
            "image_embeds_cls": image_embeds[:, 0, :8].clone(),
            "image_embeds_mean": image_embeds.mean(dim=(1, 2)),
            "text_embeds_cls": text_embeds[:, 0, :8].clone(),
            "fused_cls": fused.hidden_states[:, 0, :8].clone(),
            "itm_logits": model.itm_logits(fused.hidden_states[:, 0]),
            "mlm_logits_sum": model.mlm_logits(fused.hidden_states).sum(dim=(1, 2)),
            "image_feat": model.image_feat(image_embeds)[:, :8].clone(),
        }


def test_golden_outputs_of_tiny_model():
    path = GOLDEN / "tiny_golden.pt"
    outputs = _golden_outputs()
    if os.environ.get("AMC_REGEN_GOLDEN"):
        stored = torch.load(path) if path.exists() else {}
        stored.update({f"model.{k}": v for k, v in outputs.items()})
        torch.save(stored, path)
    golden = torch.load(path)
    for key, value in outputs.items():
        torch.testing.assert_close(value, golden[f"model.{key}"], rtol=1e-4, atol=1e-5, msg=key)
