"""The Transformer part types (``model=transformer``): pre-LayerNorm layers between a patch
or token stem and a sequence classifier or causal LM head.

    spec = {"in_shape": [1, 8, 8], "num_classes": 10,
            "stem": {"type": "patch_embed", "in_shape": [1, 8, 8], "patch": 2, "d_model": 32,
                     "cls_token": False, "tokens": 16},
            "blocks": [{"name": "block1", "type": "transformer_layer", "d_model": 32, "n_heads": 4,
                        "mlp_hidden": 128, "tokens": 16, "causal": False, "dropout": 0.0,
                        "out_shape": [16, 32]}],
            "head": {"type": "seq_classifier", "in": 32, "out": 10, "pool": "mean", "tokens": 16}}

A layer computes ``x + attn(ln1(x))``, then ``x + mlp(ln2(x))``; attention is one
``attn.qkv`` Linear, ``scaled_dot_product_attention`` and ``attn.proj``; the MLP is
``mlp.fc1`` -> GELU -> ``mlp.fc2`` (names LoRA targets and BitFit patterns rely on).
Growth (``models/transformer_growth.py``): Net2Net widening of the MLP hidden size, and a
residual layer whose output projections are zero (the identity) inserted above a layer.
Each part is built from its typed record (``core/parts_seq.py``); the dict above is how a
spec is stored.

Padding (parts whose spec says ``"padding": true``: padded text classification): token id
0 is padding. The token stem outputs an all-zero row at a padded position; each layer
treats all-zero rows as padding (no query attends to them, and they stay zero) and the
classifier's mean skips them. The mask so travels inside the activations, through the
stages' frozen-prefix caches and auxiliary heads, with no extra argument anywhere.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from stagetrain.core import parts_seq as parts
from stagetrain.models.registry import PartType, register


class PatchEmbed(nn.Module):
    """Images [B, C, H, W] -> non-overlapping ``patch`` x ``patch`` patches -> Linear, plus a
    learned position embedding (and a learned CLS token in front when ``cls_token``)."""

    def __init__(self, spec: parts.PatchEmbed):
        super().__init__()
        self.spec = spec
        c, p, d = spec.in_shape[0], spec.patch, spec.d_model
        self.proj = nn.Linear(c * p * p, d)
        self.cls = nn.Parameter(0.02 * torch.randn(1, 1, d)) if spec.cls_token else None
        self.pos = nn.Parameter(0.02 * torch.randn(1, spec.tokens, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        p = self.spec.patch
        patches = x.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5).reshape(b, -1, c * p * p)
        z = self.proj(patches)
        if self.cls is not None:
            z = torch.cat([self.cls.expand(b, -1, -1), z], dim=1)
        return z + self.pos


class TokenEmbed(nn.Module):
    """Token ids [B, T] (T <= max_len) -> embedding + learned position embedding."""

    def __init__(self, spec: parts.TokenEmbed):
        super().__init__()
        self.spec = spec
        self.embed = nn.Embedding(spec.vocab_size, spec.d_model)
        nn.init.normal_(self.embed.weight, std=0.02)
        self.pos = nn.Parameter(0.02 * torch.randn(1, spec.max_len, spec.d_model))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.embed(x) + self.pos[:, : x.shape[1]]
        return z * (x != 0).unsqueeze(-1).to(z.dtype) if self.spec.padding else z


def real_positions(x: torch.Tensor) -> torch.Tensor:
    """[B, T] True where a sequence's row is not padding (padding rows are all zero)."""
    return x.ne(0).any(-1)


def masked_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean over the positions that are not padding (all positions when none is)."""
    keep = real_positions(x).unsqueeze(-1).to(x.dtype)
    return (x * keep).sum(1) / keep.sum(1).clamp_min(1)


class Attention(nn.Module):
    """Multi-head self-attention: one qkv projection, SDPA, an output projection."""

    def __init__(self, d: int, heads: int, causal: bool, dropout: float):
        super().__init__()
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.heads, self.causal, self.dropout = heads, causal, dropout

    def forward(self, x: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        """``keep``: [B, T], False at padded keys (None: no padding)."""
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        mask, causal = None, self.causal
        if keep is not None:
            mask = keep[:, None, None, :]
            if causal:
                mask, causal = mask & torch.ones(t, t, dtype=torch.bool, device=x.device).tril(), False
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal,
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class MLP(nn.Module):
    def __init__(self, d: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(d, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class TransformerLayer(nn.Module):
    """Pre-LN layer: x + attn(ln1(x)), then x + mlp(ln2(x)) (dropout on both branches)."""

    def __init__(self, spec: parts.TransformerLayer):
        super().__init__()
        self.spec = spec
        d, p = spec.d_model, float(0.0 if spec.dropout is None else spec.dropout)
        self.ln1 = nn.LayerNorm(d)
        self.attn = Attention(d, spec.n_heads, bool(spec.causal), p)
        self.ln2 = nn.LayerNorm(d)
        self.mlp = MLP(d, spec.mlp_hidden)
        self.drop = nn.Dropout(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        keep = real_positions(x) if self.spec.padding else None
        x = x + self.drop(self.attn(self.ln1(x), keep))
        x = x + self.drop(self.mlp(self.ln2(x)))
        return x if keep is None else x * keep.unsqueeze(-1).to(x.dtype)


class SeqClassifier(nn.Module):
    """Mean over positions (or the CLS token at position 0) -> LayerNorm -> ``layer``
    (Linear). ``layer`` is the name layer-wise training's auxiliary head hands over. With
    ``padding`` the mean skips padded positions."""

    def __init__(self, spec: parts.SeqClassifier):
        super().__init__()
        self.spec = spec
        self.norm = nn.LayerNorm(spec.inp)
        self.layer = nn.Linear(spec.inp, spec.out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.spec.pool == "cls":
            pooled = x[:, 0]
        else:
            pooled = masked_mean(x) if self.spec.padding else x.mean(1)
        return self.layer(self.norm(pooled))


class LMHead(nn.Module):
    """Causal LM head: final LayerNorm -> Linear to the vocabulary, per position [B, T, V].
    With ``tie`` the Linear's weight is the token stem's embedding (``bind`` connects them;
    the weight is stored once, under the stem)."""

    def __init__(self, spec: parts.LMHeadPart):
        super().__init__()
        self.spec = spec
        self.norm = nn.LayerNorm(spec.inp)
        self.layer = None if spec.tie else nn.Linear(spec.inp, spec.out, bias=False)
        self._tied: list[nn.Embedding] = []  # a plain list: not a submodule, so no second copy

    def bind(self, model: nn.Module) -> None:
        if self.spec.tie:
            self._tied[:] = [model.stem.embed]

    @property
    def weight(self) -> torch.Tensor:
        return self._tied[0].weight if self.layer is None else self.layer.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.norm(x), self.weight)


def attention_flops(tokens: int, d: int) -> float:
    """QK^T and (softmax)V over all heads: 2 * 2 * T^2 * d (causal masking is not subtracted,
    as torch's flop counter does not)."""
    return 4.0 * tokens * tokens * d


def _layer_flops(spec: parts.TransformerLayer) -> float:
    t, d, h = spec.tokens, spec.d_model, spec.mlp_hidden
    return 2.0 * t * (3 * d * d + d * d + 2 * d * h) + attention_flops(t, d)


def _patch_flops(spec: parts.PatchEmbed) -> float:
    c, p = spec.in_shape[0], spec.patch
    patches = spec.tokens - (1 if spec.cls_token else 0)
    return 2.0 * patches * c * p * p * spec.d_model


def _lm_flops(spec: parts.LMHeadPart) -> float:
    return 2.0 * spec.tokens * spec.inp * spec.out


def _register_cpu_attention_flops() -> None:
    """torch's flop counter knows the CUDA attention kernels but not the CPU flash kernel
    that SDPA runs on CPU; count it the same way (forward: 2 matmuls, backward: 5, with the
    scores recomputed), so FLOP budgets mean the same on every device."""
    from torch.utils import flop_counter

    aten = torch.ops.aten
    fwd = getattr(aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    bwd = getattr(aten, "_scaled_dot_product_flash_attention_for_cpu_backward", None)
    if fwd is None or bwd is None or fwd in flop_counter.flop_registry:
        return

    def matmuls(q: Any, k: Any) -> float:
        b, h, tq, dh = q
        return 2.0 * b * h * tq * k[2] * dh

    flop_counter.register_flop_formula(fwd)(lambda q, k, v, *a, out_shape=None, **kw: 2 * matmuls(q, k))
    flop_counter.register_flop_formula(bwd)(lambda g, q, k, v, *a, out_shape=None, **kw: 5 * matmuls(q, k))


def _widen(*args: Any, **kw: Any) -> Any:
    from stagetrain.models.transformer_growth import widen_mlp

    return widen_mlp(*args, **kw)


def _deepen(*args: Any, **kw: Any) -> Any:
    from stagetrain.models.transformer_growth import deepen_layer

    return deepen_layer(*args, **kw)


_register_cpu_attention_flops()
LAYER_GROWTH = {
    "widen:net2net": "exact (MLP hidden units split between replicas)",
    "widen:random": "none",
    "deepen:residual_zero": "exact (attn.proj and mlp.fc2 zero: the new layer is the identity)",
    "deepen:identity": "exact (the same zero-output residual layer as residual_zero)",
    "deepen:random": "none",
    "stack": "none (copies of the trained layers on top, G_stack)",
}
register(PartType("patch_embed", "stem", PatchEmbed, _patch_flops))
register(PartType("token_embed", "stem", TokenEmbed, lambda spec: 0.0))
register(PartType("transformer_layer", "block", TransformerLayer, _layer_flops, LAYER_GROWTH, _widen, _deepen,
                  ("supervised",), width_key="mlp_hidden"))
register(PartType("seq_classifier", "head", SeqClassifier, lambda spec: 2.0 * spec.inp * spec.out))
register(PartType("lm_head", "head", LMHead, _lm_flops))
