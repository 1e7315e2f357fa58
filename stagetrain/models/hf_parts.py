"""The part types of ``model=hf``: a Hugging Face ``transformers`` model cut into a stem (its
embeddings), one block per decoder/encoder layer and a head (final norm + LM head, MLM head
or pooled classifier). Each part builds transformers' own modules from the plain config dict
its typed record carries (``core/parts_seq.py``: ``config``, with ``model_type``), so a
checkpoint's spec stays data.

    stem  {"type": "hf_embed", "model_type": "llama", "config": {...}, "padding": false, ...}
    block {"type": "hf_decoder_layer" | "hf_encoder_layer", "name": "block1", "config": {...}, ...}
    head  {"type": "hf_head", "task": "lm" | "mlm" | "classification", "in": d, "out": V or classes}

Padding (``"padding": true``, padded text classification): token id 0 is padding; the stem
zeroes padded rows, each layer masks them as keys and re-zeroes them (as ``models/transformer``),
so the mask travels inside the activations. Position ids are each model's own: rotary cos/sin
from positions 0..T-1 inside each LLaMA-style block, learned positions in GPT-2's and BERT's
stem, RoBERTa's counted past its padding id. Decoders attend causally.

Growth: decoder layers are pre-LN, so a layer whose output projections (``o_proj`` and
``down_proj``, GPT-2's ``c_proj``) are zero is the identity: ``deepen:residual_zero`` is exact.
Encoder layers (BERT, RoBERTa) normalise after the residual sum, so no inserted layer is the
identity: they offer ``stack`` and ``deepen:random`` only.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from stagetrain.core import parts_seq as parts
from stagetrain.models.growth_units import insert_copy
from stagetrain.models.hf_arch import (
    ARCHS,
    attention_mask,
    hf_class,
    hf_config,
    init_hf,
    real_positions,
)
from stagetrain.models.registry import PartType, register
from stagetrain.models.staged import StagedModel


class HFEmbed(nn.Module):
    """Token ids [B, T] -> the model's embeddings [B, T, d] (padded rows zero with padding)."""

    def __init__(self, spec: parts.HFEmbed):
        super().__init__()
        self.spec = spec
        t, config = spec.model_type, hf_config(spec.config)
        d = config.hidden_size
        if ARCHS[t]["rotary"]:
            self.embed_tokens = nn.Embedding(config.vocab_size, d, config.pad_token_id)
        elif t == "gpt2":
            self.wte = nn.Embedding(config.vocab_size, d)
            self.wpe = nn.Embedding(config.max_position_embeddings, d)
            self.drop = nn.Dropout(config.embd_pdrop)
        else:
            self.embeddings = hf_class(t, "Embeddings")(config)
        init_hf(self, config.initializer_range)

    def token_embedding(self) -> nn.Embedding:
        t = self.spec.model_type
        if ARCHS[t]["rotary"]:
            return self.embed_tokens
        return self.wte if t == "gpt2" else self.embeddings.word_embeddings

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        t = self.spec.model_type
        if ARCHS[t]["rotary"]:
            z = self.embed_tokens(ids)
        elif t == "gpt2":
            z = self.drop(self.wte(ids) + self.wpe(torch.arange(ids.shape[1], device=ids.device))[None])
        else:
            z = self.embeddings(input_ids=ids)
        return z * ids.ne(0).unsqueeze(-1).to(z.dtype) if self.spec.padding else z


class HFLayer(nn.Module):
    """One decoder/encoder layer of the model (``layer``: transformers' own class)."""

    def __init__(self, spec: parts.HFDecoderLayer):
        super().__init__()
        self.spec = spec
        t, config = spec.model_type, hf_config(spec.config)
        index = min(int(spec.index or 0), config.num_hidden_layers - 1)
        suffix = "Layer" if ARCHS[t]["kind"] == "encoder" else ("Block" if t == "gpt2" else "DecoderLayer")
        self.layer = hf_class(t, suffix)(config, layer_idx=index)
        init_hf(self.layer, config.initializer_range)
        self.rotary = hf_class(t, "RotaryEmbedding")(config=config) if ARCHS[t]["rotary"] else None

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        padding = bool(self.spec.padding)
        mask = attention_mask(h, padding, bool(self.spec.causal))
        extra: dict[str, Any] = {}
        if self.rotary is not None:
            positions = torch.arange(h.shape[1], device=h.device)[None]
            extra = {"position_ids": positions, "position_embeddings": self.rotary(h, positions)}
        out = self.layer(h, attention_mask=mask, **extra)
        out = out[0] if isinstance(out, tuple) else out
        return out * real_positions(h).unsqueeze(-1).to(out.dtype) if padding else out


class HFHead(nn.Module):
    """Decoders: final norm, then the LM head (every position) or ``score`` at the last real
    token. Encoders: the MLM head (every position), or the pooled classifier of the model's
    ``ForSequenceClassification`` (BERT's pooler on [CLS]; RoBERTa's head on <s>)."""

    def __init__(self, spec: parts.HFHead):
        super().__init__()
        self.spec = spec
        t, task = spec.model_type, spec.task
        config = hf_config(spec.config, num_labels=int(spec.out) if task == "classification" else 2)
        d, out = config.hidden_size, int(spec.out)
        self._tied: list[nn.Embedding] = []  # a plain list: the stem holds the tied weight once
        if ARCHS[t]["kind"] == "decoder":
            eps = config.layer_norm_epsilon if t == "gpt2" else config.rms_norm_eps
            self.norm = nn.LayerNorm(d, eps=eps) if t == "gpt2" else hf_class(t, "RMSNorm")(d, eps=eps)
            self.out = None if spec.tie else nn.Linear(d, out, bias=False)
        elif task == "mlm":
            if t == "bert":
                self.transform = hf_class(t, "PredictionHeadTransform")(config)
            else:
                self.dense = nn.Linear(d, d)
                self.layer_norm = nn.LayerNorm(d, eps=config.layer_norm_eps)
            self.decoder = None if spec.tie else nn.Linear(d, out, bias=False)
            self.bias = nn.Parameter(torch.zeros(out))
        elif t == "bert":
            self.pooler = hf_class(t, "Pooler")(config)
            p = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
            self.drop = nn.Dropout(p)
            self.classifier = nn.Linear(d, out)
        else:
            self.classifier = hf_class(t, "ClassificationHead")(config)
        init_hf(self, config.initializer_range)

    def bind(self, model: nn.Module) -> None:
        if self.spec.tie:
            self._tied[:] = [model.stem.token_embedding()]

    def _weight(self, own: nn.Linear | None) -> torch.Tensor:
        return self._tied[0].weight if own is None else own.weight

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        t, task = self.spec.model_type, self.spec.task
        if ARCHS[t]["kind"] == "decoder":
            z = self.norm(h)
            if task == "lm":
                return F.linear(z, self._weight(self.out))
            keep = real_positions(h) if self.spec.padding else torch.ones(h.shape[:2], dtype=torch.bool,
                                                                                  device=h.device)
            last = (keep.long() * torch.arange(h.shape[1], device=h.device)).argmax(-1)
            return F.linear(z[torch.arange(h.shape[0], device=h.device), last], self._weight(self.out))
        if task == "mlm":
            if t == "bert":
                z = self.transform(h)
            else:
                z = self.layer_norm(F.gelu(self.dense(h)))
            return F.linear(z, self._weight(self.decoder), self.bias)
        if t == "bert":
            return self.classifier(self.drop(self.pooler(h)))
        return self.classifier(h)


def deepen_hf(model: StagedModel, index: int, kind: str = "residual_zero") -> StagedModel:
    """A layer like layer ``index`` inserted above it: the identity (residual_zero, identity:
    its output projections zero, its other weights fresh) or freshly initialised (random)."""
    new, block = insert_copy(model, index)
    with torch.no_grad():
        if kind in ("residual_zero", "identity"):
            layer = block.layer
            for path in ARCHS[model.arch.blocks[index].model_type]["zero"]:
                linear = layer.get_submodule(path)
                linear.weight.zero_()
                if linear.bias is not None:
                    linear.bias.zero_()
    return new


def _layer_flops(spec: parts.HFDecoderLayer) -> float:
    """Forward FLOPs per sample: the layer's matmuls over T tokens, plus attention 4 T^2 d."""
    c, t = spec.config, int(spec.tokens)
    d = int(c.get("hidden_size") or c.get("n_embd"))
    heads = int(c.get("num_attention_heads") or c.get("n_head"))
    kv = int(c.get("num_key_value_heads") or heads) * (d // heads)
    inner = int(c.get("intermediate_size") or c.get("n_inner") or 4 * d)
    mlp = (3 if ARCHS[spec.model_type]["rotary"] else 2) * d * inner
    return 2.0 * t * (2 * d * d + 2 * d * kv + mlp) + 4.0 * t * t * d


def _head_flops(spec: parts.HFHead) -> float:
    d, out, t = int(spec.inp), int(spec.out), int(spec.tokens)
    if spec.task == "lm":
        return 2.0 * t * d * out
    if spec.task == "mlm":
        return 2.0 * t * (d * d + d * out)
    return 2.0 * (d * out + (0 if ARCHS[spec.model_type]["kind"] == "decoder" else d * d))


DECODER_GROWTH = {
    "deepen:residual_zero": "exact (o_proj/down_proj, GPT-2's c_proj, zero: the new pre-LN layer is the identity)",
    "deepen:identity": "exact (the same zero-output layer as residual_zero)",
    "deepen:random": "none",
    "stack": "none (copies of the trained layers on top, G_stack)",
}
ENCODER_GROWTH = {"deepen:random": "none", "stack": "none (copies of the trained layers on top, G_stack)"}
register(PartType("hf_embed", "stem", HFEmbed, lambda spec: 0.0))
register(PartType("hf_decoder_layer", "block", HFLayer, _layer_flops, DECODER_GROWTH, None, deepen_hf))
register(PartType("hf_encoder_layer", "block", HFLayer, _layer_flops, ENCODER_GROWTH, None, deepen_hf))
register(PartType("hf_head", "head", HFHead, _head_flops))
