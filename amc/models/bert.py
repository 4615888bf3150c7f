"""ALBEF's BERT text/fusion encoder (``models/xbert.py``), written out for this project.

Layers ``0 .. fusion_layer-1`` are text-only (bidirectional self-attention); layers from
``fusion_layer`` on add a cross-attention sub-layer whose keys and values are ALL image
tokens (class token included). Module and parameter names are those of HF's BERT as
ALBEF uses it (``bert.embeddings``, ``bert.encoder.layer.{i}.attention.self.query``,
``.crossattention.*``, ``cls.predictions.*``) so ALBEF checkpoints load without renaming.
transformers' own ``BertLayer`` is not used: it only enables cross-attention together
with ``is_decoder=True``, which makes the self-attention causal.

Each attention module runs either ``eager`` (explicit softmax: the probabilities can be
captured and a second-order gradient passes through it on every backend) or ``sdpa``
(``torch.nn.functional.scaled_dot_product_attention``: faster, nothing captured). The
model decides per layer; see :meth:`amc.models.albef.ALBEF.set_attention`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from amc.models.config import TextConfig

# ALBEF/HF BERT turn a 0/1 attention mask into an additive bias of -10000 (not -inf):
# kept so that the eager path reproduces the released code's numbers.
MASK_VALUE = -10000.0

_ACT = {
    "gelu": nn.GELU,
    "relu": nn.ReLU,
    "gelu_new": lambda: nn.GELU(approximate="tanh"),
    "gelu_pytorch_tanh": lambda: nn.GELU(approximate="tanh"),
}


def additive_mask(attention_mask: Tensor, dtype: torch.dtype) -> Tensor:
    """[B, L] 0/1 mask -> [B, 1, 1, L] additive bias (0 where attended, -10000 on padding)."""
    mask = attention_mask[:, None, None, :].to(dtype)
    return (1.0 - mask) * MASK_VALUE


class BertEmbeddings(nn.Module):
    def __init__(self, config: TextConfig) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(
            config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id
        )
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        # Persistent, as in ALBEF's checkpoints (``*.embeddings.position_ids`` is a saved key).
        self.register_buffer(
            "position_ids", torch.arange(config.max_position_embeddings).expand((1, -1)).clone()
        )

    def forward(self, input_ids: Tensor) -> Tensor:
        length = input_ids.shape[1]
        if length > self.position_ids.shape[1]:
            raise ValueError(
                f"text of {length} tokens is longer than max_position_embeddings {self.position_ids.shape[1]}"
            )
        position_ids = self.position_ids[:, :length]
        token_type_ids = torch.zeros_like(input_ids)  # single-segment input, as in ALBEF
        embeddings = (
            self.word_embeddings(input_ids)
            + self.token_type_embeddings(token_type_ids)
            + self.position_embeddings(position_ids)
        )
        return self.dropout(self.LayerNorm(embeddings))


class BertSelfAttention(nn.Module):
    def __init__(self, config: TextConfig, is_cross_attention: bool) -> None:
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        kv_width = config.encoder_width if is_cross_attention else config.hidden_size
        self.query = nn.Linear(config.hidden_size, config.hidden_size)
        self.key = nn.Linear(kv_width, config.hidden_size)
        self.value = nn.Linear(kv_width, config.hidden_size)
        self.dropout = nn.Dropout(config.attention_probs_dropout_prob)
        self.implementation = "eager"

    def _heads(self, x: Tensor) -> Tensor:
        batch, length, _ = x.shape
        return x.view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(
        self,
        hidden_states: Tensor,
        mask: Tensor | None,
        kv_states: Tensor | None = None,
        capture: bool = False,
        kv_index: Tensor | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """Returns the context [B, L, H] and, if ``capture``, the probabilities after softmax, before dropout.

        ``kv_index`` [B]: ``kv_states`` holds fewer rows (e.g. one per image) and row ``kv_index[b]``
        serves query row ``b``; keys and values are projected once per row, then gathered.
        """
        kv_states = hidden_states if kv_states is None else kv_states
        query = self._heads(self.query(hidden_states))
        key = self._heads(self.key(kv_states))
        value = self._heads(self.value(kv_states))
        if kv_index is not None:
            key, value = key[kv_index], value[kv_index]
        probs = None
        if self.implementation == "sdpa" and not capture:
            context = F.scaled_dot_product_attention(
                query, key, value, attn_mask=mask, dropout_p=self.dropout.p if self.training else 0.0
            )
        else:
            scores = torch.matmul(query, key.transpose(-1, -2)) / math.sqrt(self.head_dim)
            if mask is not None:
                scores = scores + mask
            probs = scores.softmax(dim=-1)
            context = torch.matmul(self.dropout(probs), value)
        batch, _, length, _ = context.shape
        context = context.transpose(1, 2).reshape(batch, length, self.num_heads * self.head_dim)
        return context, (probs if capture else None)


class BertOutput(nn.Module):
    """Dense, dropout, residual, LayerNorm: BERT's ``attention.output`` (from the attention width)
    and ``output`` (from the intermediate width) sub-layers, with their checkpoint names."""

    def __init__(self, config: TextConfig, in_features: int) -> None:
        super().__init__()
        self.dense = nn.Linear(in_features, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states: Tensor, residual: Tensor) -> Tensor:
        return self.LayerNorm(self.dropout(self.dense(hidden_states)) + residual)


class BertAttention(nn.Module):
    def __init__(self, config: TextConfig, is_cross_attention: bool = False) -> None:
        super().__init__()
        self.self = BertSelfAttention(config, is_cross_attention)
        self.output = BertOutput(config, config.hidden_size)

    def forward(
        self,
        hidden_states: Tensor,
        mask: Tensor | None,
        kv_states: Tensor | None = None,
        capture: bool = False,
        kv_index: Tensor | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        context, probs = self.self(hidden_states, mask, kv_states, capture, kv_index)
        return self.output(context, hidden_states), probs


class BertIntermediate(nn.Module):
    def __init__(self, config: TextConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.intermediate_act_fn = _ACT[config.hidden_act]()

    def forward(self, hidden_states: Tensor) -> Tensor:
        return self.intermediate_act_fn(self.dense(hidden_states))


class BertLayer(nn.Module):
    """Self-attention, then (fusion layers only) cross-attention over the image tokens, then the MLP."""

    def __init__(self, config: TextConfig, layer_index: int) -> None:
        super().__init__()
        self.layer_index = layer_index
        self.attention = BertAttention(config)
        self.has_cross_attention = layer_index >= config.fusion_layer
        if self.has_cross_attention:
            self.crossattention = BertAttention(config, is_cross_attention=True)
        self.intermediate = BertIntermediate(config)
        self.output = BertOutput(config, config.intermediate_size)

    def set_attention(self, implementation: str) -> None:
        self.attention.self.implementation = implementation
        if self.has_cross_attention:
            self.crossattention.self.implementation = implementation

    def forward(
        self,
        hidden_states: Tensor,
        mask: Tensor | None,
        image_embeds: Tensor | None = None,
        capture_cross_attention: bool = False,
        image_index: Tensor | None = None,
        capture_self_attention: bool = False,
    ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """The hidden states, then the self-attention and the cross-attention probabilities (each
        None unless captured; captured ones are after softmax, before dropout)."""
        hidden_states, self_probs = self.attention(hidden_states, mask, capture=capture_self_attention)
        cross_probs = None
        if self.has_cross_attention:
            if image_embeds is None:
                raise ValueError(f"fusion layer {self.layer_index} needs image_embeds")
            # The image attention mask of ALBEF is all ones: no bias.
            hidden_states, cross_probs = self.crossattention(
                hidden_states, None, image_embeds, capture_cross_attention, image_index
            )
        return self.output(self.intermediate(hidden_states), hidden_states), self_probs, cross_probs


class BertEncoder(nn.Module):
    def __init__(self, config: TextConfig) -> None:
        super().__init__()
        self.layer = nn.ModuleList(BertLayer(config, i) for i in range(config.num_hidden_layers))


class BertModel(nn.Module):
    """BERT body without pooler (ALBEF builds it with ``add_pooling_layer=False``)."""

    def __init__(self, config: TextConfig) -> None:
        super().__init__()
        self.embeddings = BertEmbeddings(config)
        self.encoder = BertEncoder(config)


class BertPredictionHeadTransform(nn.Module):
    def __init__(self, config: TextConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.transform_act_fn = _ACT[config.hidden_act]()
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, hidden_states: Tensor) -> Tensor:
        return self.LayerNorm(self.transform_act_fn(self.dense(hidden_states)))


class BertLMPredictionHead(nn.Module):
    def __init__(self, config: TextConfig) -> None:
        super().__init__()
        self.transform = BertPredictionHeadTransform(config)
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))
        # HF ties the decoder bias to ``bias``: both names are in the checkpoint, one tensor.
        self.decoder.bias = self.bias

    def forward(self, hidden_states: Tensor) -> Tensor:
        return self.decoder(self.transform(hidden_states))


class BertOnlyMLMHead(nn.Module):
    def __init__(self, config: TextConfig) -> None:
        super().__init__()
        self.predictions = BertLMPredictionHead(config)

    def forward(self, hidden_states: Tensor) -> Tensor:
        return self.predictions(hidden_states)


class BertForMaskedLM(nn.Module):
    """ALBEF's ``text_encoder``: BERT body (``bert``) and MLM head (``cls``).

    The MLM decoder weight is tied to the word embeddings (HF's default, which ALBEF keeps):
    ``cls.predictions.decoder.weight`` and ``bert.embeddings.word_embeddings.weight`` are
    both saved, and are the same tensor.
    """

    def __init__(self, config: TextConfig) -> None:
        super().__init__()
        self.config = config
        self.bert = BertModel(config)
        self.cls = BertOnlyMLMHead(config)
        self.apply(self._init_weights)
        self.tie_weights()

    def tie_weights(self) -> None:
        self.cls.predictions.decoder.weight = self.bert.embeddings.word_embeddings.weight

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        # HF BertPreTrainedModel._init_weights
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            module.weight.normal_(0.0, std)
            if module.bias is not None:
                module.bias.zero_()
        elif isinstance(module, nn.Embedding):
            module.weight.normal_(0.0, std)
            if module.padding_idx is not None:
                module.weight[module.padding_idx].zero_()
        elif isinstance(module, nn.LayerNorm):
            module.weight.fill_(1.0)
            module.bias.zero_()
        elif isinstance(module, BertLMPredictionHead):
            module.bias.zero_()
