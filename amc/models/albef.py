"""ALBEF (Li et al., 2021) as the AMC released code uses it: one module, any size.

``ALBEF(config).state_dict()`` has exactly the keys of ALBEF's pretraining checkpoint
(``ALBEF.pth['model']``, listed in ``tests/golden/albef_checkpoint_keys_dtypes.txt``), so checkpoints load
with an identity key map and :func:`amc.models.checkpoint.export_albef` writes ALBEF's
layout. The engines (pretraining, fine-tuning, evaluation) call the public methods below;
the model has no monolithic ``forward`` because every objective combines them differently.

Attention implementation (``config.attention``):

* ``"fast"`` (default): SDPA in the image encoder, in the momentum encoders and in the
  text/fusion layers before ``gradcam_layer``; explicit softmax ("eager") at
  ``gradcam_layer`` and after, because GradCAM captures the probabilities there and the AMC
  loss back-propagates through their gradient (a second-order path that fused kernels do
  not support on every backend).
* ``"reference"``: eager everywhere, the released code's path (benchmarks, equivalence tests).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Collection
from functools import partial

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn

from amc.io import AmcError
from amc.models.bert import BertForMaskedLM, additive_mask
from amc.models.config import ATTENTION_MODES, ModelConfig

log = logging.getLogger(__name__)


@dataclasses.dataclass
class FusionOutput:
    """Output of :meth:`ALBEF.fuse`.

    hidden_states: [B, L, H] the last fusion layer's output.
    cross_attention: [B, heads, L, 1+N] the ``gradcam_layer`` cross-attention probabilities
        after softmax and before dropout, inside the autograd graph; None unless captured.
    cross_attentions: fusion layer -> its [B, heads, L, 1+N] cross-attention probabilities, for
        the layers of ``capture_layers`` (the explainers, :mod:`amc.explainers`); else empty.
    self_attentions: fusion layer -> its [B, heads, L, L] self-attention probabilities, for the
        layers of ``capture_layers`` with ``capture_self_attention``; else empty.
    """

    hidden_states: Tensor
    cross_attention: Tensor | None = None
    cross_attentions: dict[int, Tensor] = dataclasses.field(default_factory=dict)
    self_attentions: dict[int, Tensor] = dataclasses.field(default_factory=dict)


TIMM_INIT_STD = 0.02


def build_visual_encoder(config: ModelConfig) -> VisionTransformer:
    """timm's ViT with ALBEF's settings: class token, LayerNorm eps 1e-6, no head, qkv bias."""
    vision = config.vision
    encoder = VisionTransformer(
        img_size=config.image_res,
        patch_size=vision.patch_size,
        in_chans=vision.in_chans,
        num_classes=0,
        embed_dim=vision.width,
        depth=vision.depth,
        num_heads=vision.heads,
        mlp_ratio=vision.mlp_ratio,
        qkv_bias=vision.qkv_bias,
        drop_path_rate=vision.drop_path_rate,
        norm_layer=partial(nn.LayerNorm, eps=vision.layer_norm_eps),
    )
    if vision.initializer_range != TIMM_INIT_STD:
        # timm initialises every Linear with trunc_normal(std=0.02) and zero bias; same, wider.
        for module in encoder.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=vision.initializer_range)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
    return encoder


def interpolate_pos_embed(pos_embed: Tensor, grid: tuple[int, int], num_extra_tokens: int = 1) -> Tensor:
    """ALBEF's ``interpolate_pos_embed``: resize the patch part bicubically, keep the class token.

    ``pos_embed`` is [1, extra + h0*w0, C] with a square old grid; returns [1, extra + h*w, C].
    """
    extra, patches = pos_embed[:, :num_extra_tokens], pos_embed[:, num_extra_tokens:]
    old = int(round(patches.shape[1] ** 0.5))
    if old * old != patches.shape[1]:
        raise AmcError(f"pos_embed with {patches.shape[1]} patch positions is not a square grid")
    if (old, old) == tuple(grid):
        return pos_embed
    width = pos_embed.shape[-1]
    patches = patches.reshape(-1, old, old, width).permute(0, 3, 1, 2)
    patches = F.interpolate(patches, size=tuple(grid), mode="bicubic", align_corners=False)
    patches = patches.permute(0, 2, 3, 1).flatten(1, 2)
    return torch.cat((extra, patches), dim=1)


class ALBEF(nn.Module):
    """Image encoder, text/fusion encoder, heads, momentum copies and feature queues."""

    def __init__(self, config: ModelConfig, attention: str | None = None) -> None:
        super().__init__()
        if attention is not None:
            config = dataclasses.replace(config, attention=attention)
        config.validate()
        self.config = config
        embed_dim, text_width = config.embed_dim, config.text.hidden_size

        # Registration order reproduces ALBEF's state_dict order (own parameter and buffers first).
        self.visual_encoder = build_visual_encoder(config)
        self.text_encoder = BertForMaskedLM(config.text)
        self.vision_proj = nn.Linear(config.vision.width, embed_dim)
        self.text_proj = nn.Linear(text_width, embed_dim)
        self.temp = nn.Parameter(torch.ones([]) * config.temp)
        self.itm_head = nn.Linear(text_width, 2)

        self.visual_encoder_m = build_visual_encoder(config)
        self.vision_proj_m = nn.Linear(config.vision.width, embed_dim)
        self.text_encoder_m = BertForMaskedLM(config.text)
        self.text_proj_m = nn.Linear(text_width, embed_dim)
        self.copy_params()

        self.register_buffer("image_queue", F.normalize(torch.randn(embed_dim, config.queue_size), dim=0))
        self.register_buffer("text_queue", F.normalize(torch.randn(embed_dim, config.queue_size), dim=0))
        self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))
        self.set_attention(config.attention)

    # ------------------------------------------------------------------ structure
    @property
    def model_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        return [
            (self.visual_encoder, self.visual_encoder_m),
            (self.vision_proj, self.vision_proj_m),
            (self.text_encoder, self.text_encoder_m),
            (self.text_proj, self.text_proj_m),
        ]

    @property
    def image_grid(self) -> tuple[int, int]:
        """(h, w) of the patch grid at the current image resolution."""
        return tuple(self.visual_encoder.patch_embed.grid_size)

    @property
    def fusion_layer(self) -> int:
        return self.config.text.fusion_layer

    @property
    def gradcam_layer(self) -> int:
        return self.config.gradcam_layer

    @property
    def fusion_layers(self) -> range:
        """Absolute indices of the layers with cross-attention (fusion_layer .. last)."""
        return self.config.fusion_layers

    def set_attention(self, mode: str) -> None:
        """Choose the attention implementations (``"fast"`` or ``"reference"``), see the module doc."""
        if mode not in ATTENTION_MODES:
            raise AmcError(f"attention {mode!r} is not one of {ATTENTION_MODES}")
        self.config = dataclasses.replace(self.config, attention=mode)
        fast = mode == "fast"
        for encoder in (self.visual_encoder, self.visual_encoder_m):
            for block in encoder.blocks:
                block.attn.fused_attn = fast
        for index, layer in enumerate(self.text_encoder.bert.encoder.layer):
            layer.set_attention("sdpa" if fast and index < self.config.gradcam_layer else "eager")
        for layer in self.text_encoder_m.bert.encoder.layer:
            # The momentum encoders run under no_grad and are never captured.
            layer.set_attention("sdpa" if fast else "eager")

    def resize_image_res(self, image_res: int) -> None:
        """Run at another resolution: resize both position embeddings as ALBEF's interpolate_pos_embed."""
        config = self.config.replace(image_res=image_res)
        grid = config.image_grid
        for encoder in (self.visual_encoder, self.visual_encoder_m):
            old = encoder.pos_embed.detach()
            encoder.patch_embed.set_input_size(img_size=(image_res, image_res))
            new = interpolate_pos_embed(old, grid)
            encoder.pos_embed = nn.Parameter(new.contiguous(), requires_grad=encoder.pos_embed.requires_grad)
        self.config = config

    # ------------------------------------------------------------------- encoders
    def encode_image(self, image: Tensor) -> Tensor:
        """[B, 3, R, R] -> [B, 1+N, W] image tokens after the final norm."""
        return self.visual_encoder.forward_features(image)

    def encode_image_m(self, image: Tensor) -> Tensor:
        return self.visual_encoder_m.forward_features(image)

    def _bert(self, momentum: bool):
        return (self.text_encoder_m if momentum else self.text_encoder).bert

    def encode_text(self, input_ids: Tensor, attention_mask: Tensor, momentum: bool = False) -> Tensor:
        """Text-only layers 0..fusion_layer-1: [B, L] ids and mask -> [B, L, H]."""
        bert = self._bert(momentum)
        hidden = bert.embeddings(input_ids)
        mask = additive_mask(attention_mask, hidden.dtype)
        for layer in bert.encoder.layer[: self.fusion_layer]:
            hidden = layer(hidden, mask)[0]
        return hidden

    def encode_text_m(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        return self.encode_text(input_ids, attention_mask, momentum=True)

    def fuse(
        self,
        text_embeds: Tensor,
        attention_mask: Tensor,
        image_embeds: Tensor,
        capture_cross_attention: bool = False,
        momentum: bool = False,
        image_index: Tensor | None = None,
        capture_layers: Collection[int] = (),
        capture_self_attention: bool = False,
    ) -> FusionOutput:
        """Fusion layers fusion_layer..end over ALL image tokens; optionally capture gradcam_layer's P.

        With ``image_index`` [B], ``image_embeds`` holds each image once and text ``b`` reads image
        ``image_index[b]``: the cross-attention keys and values are projected once per image
        (the same result as ``fuse(text, mask, image_embeds[image_index])``, less work when
        several texts share an image, as at evaluation).

        ``capture_layers`` (absolute fusion layer indices) also captures those layers' cross-attention
        (and, with ``capture_self_attention``, their self-attention) into
        :attr:`FusionOutput.cross_attentions` / :attr:`FusionOutput.self_attentions`. A captured
        attention runs with an explicit softmax, so in ``"fast"`` mode a captured layer before
        ``gradcam_layer`` agrees with the uncaptured one to float precision, not bit for bit.
        """
        if (capture_cross_attention or capture_layers) and momentum:
            raise ValueError("the momentum encoder does not capture cross-attention")
        layers = set(capture_layers)
        outside = sorted(layers - set(self.fusion_layers))
        if outside:
            raise ValueError(
                f"fuse: layer(s) {outside} are not fusion layers ({self.fusion_layers.start}.."
                f"{self.fusion_layers.stop - 1}); only those have cross-attention"
            )
        if image_index is not None:
            if image_index.shape != (text_embeds.shape[0],):
                raise ValueError(
                    f"fuse: image_index of shape {tuple(image_index.shape)} for {text_embeds.shape[0]} texts"
                )
        elif text_embeds.shape[0] != image_embeds.shape[0]:
            raise ValueError(
                f"fuse: {text_embeds.shape[0]} texts but {image_embeds.shape[0]} images "
                "(index the image embeddings per text first)"
            )
        bert = self._bert(momentum)
        hidden = text_embeds
        mask = additive_mask(attention_mask, hidden.dtype)
        output = FusionOutput(hidden_states=hidden)
        for index in range(self.fusion_layer, len(bert.encoder.layer)):
            capture = (capture_cross_attention and index == self.gradcam_layer) or index in layers
            hidden, self_probs, cross_probs = bert.encoder.layer[index](
                hidden, mask, image_embeds, capture, image_index, capture_self_attention and index in layers
            )
            if capture_cross_attention and index == self.gradcam_layer:
                output.cross_attention = cross_probs
            if index in layers:
                output.cross_attentions[index] = cross_probs
                if capture_self_attention:
                    output.self_attentions[index] = self_probs
        output.hidden_states = hidden
        return output

    # ---------------------------------------------------------------------- heads
    def itm_logits(self, fused_cls: Tensor) -> Tensor:
        """[B, H] fusion output at [CLS] -> [B, 2] logits; class 1 = match."""
        return self.itm_head(fused_cls)

    def mlm_logits(self, hidden_states: Tensor, momentum: bool = False) -> Tensor:
        """[B, L, H] fusion output -> [B, L, vocab] MLM logits."""
        return (self.text_encoder_m if momentum else self.text_encoder).cls(hidden_states)

    def image_feat(self, image_embeds: Tensor, momentum: bool = False) -> Tensor:
        """L2-normalised projection of the image [CLS] token: [B, 1+N, W] -> [B, E]."""
        proj = self.vision_proj_m if momentum else self.vision_proj
        return F.normalize(proj(image_embeds[:, 0, :]), dim=-1)

    def text_feat(self, text_embeds: Tensor, momentum: bool = False) -> Tensor:
        """L2-normalised projection of the text [CLS] token: [B, L, H] -> [B, E]."""
        proj = self.text_proj_m if momentum else self.text_proj
        return F.normalize(proj(text_embeds[:, 0, :]), dim=-1)

    # ----------------------------------------------------- momentum and queues
    def _param_lists(self) -> tuple[list[Tensor], list[Tensor]]:
        online, momentum = [], []
        for model, model_m in self.model_pairs:
            online.extend(model.parameters())
            momentum.extend(model_m.parameters())
        return online, momentum

    @torch.no_grad()
    def copy_params(self) -> None:
        """Momentum copies := online weights, no gradient (ALBEF's copy_params, at init)."""
        online, momentum = self._param_lists()
        for param, param_m in zip(online, momentum, strict=True):
            param_m.data.copy_(param.data)
            param_m.requires_grad = False

    @torch.no_grad()
    def momentum_update(self) -> None:
        """param_m = momentum * param_m + (1 - momentum) * param, for all pairs at once."""
        online, momentum = self._param_lists()
        m = self.config.momentum
        torch._foreach_mul_(momentum, m)
        torch._foreach_add_(momentum, online, alpha=1.0 - m)

    @torch.no_grad()
    def dequeue_and_enqueue(self, image_feat: Tensor, text_feat: Tensor) -> None:
        """Write the (all-gathered, when distributed) features at ``queue_ptr`` and advance it.

        Wraps around the end of the queue as AMC's released code does (ALBEF's own asserts that
        the queue size is a multiple of the batch), so any batch size works.
        """
        image_feat, text_feat = _concat_all_gather(image_feat), _concat_all_gather(text_feat)
        batch, size = image_feat.shape[0], self.image_queue.shape[1]
        if batch > size:
            raise AmcError(f"the global batch ({batch}) is larger than the queue ({size})")
        ptr = int(self.queue_ptr)
        positions = (torch.arange(batch, device=self.image_queue.device) + ptr) % size
        self.image_queue[:, positions] = image_feat.T.to(self.image_queue.dtype)
        self.text_queue[:, positions] = text_feat.T.to(self.text_queue.dtype)
        self.queue_ptr[0] = (ptr + batch) % size

    def num_parameters(self, trainable_only: bool = False) -> int:
        """Distinct parameters (tied weights counted once)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)


def _concat_all_gather(tensor: Tensor) -> Tensor:
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return tensor
    world = torch.distributed.get_world_size()
    if world == 1:
        return tensor
    gathered = [torch.empty_like(tensor) for _ in range(world)]
    torch.distributed.all_gather(gathered, tensor.contiguous())
    return torch.cat(gathered, dim=0)
