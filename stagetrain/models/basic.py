"""The built-in part types: ``linear`` and ``conv`` blocks and the ``linear_head`` head
(flatten + Linear), which ``model=mlp`` and ``model=cnn`` are made of. Each is built from its
typed record (``core/parts.py``: ``Dense``, ``Conv``, ``LinearHead``); stored, a spec reads

    {"in_shape": [1, 8, 8], "num_classes": 10,
     "blocks": [{"name": "block1", "type": "conv", "in": 1, "out": 16, "kernel": 3,
                 "pool": 2, "act": "relu", "bn": True, "dropout": 0.0,
                 "out_shape": [16, 4, 4]},
                {"name": "block2", "type": "linear", "in": 256, "out": 128, ...}],
     "head": {"in": 128, "out": 10}}
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from stagetrain.core.parts import Conv, Dense, LinearHead
from stagetrain.models.registry import PartType, register

ACTIVATIONS = {
    "relu": nn.ReLU, "leaky_relu": nn.LeakyReLU, "gelu": nn.GELU,
    "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "identity": nn.Identity,
}


class Block(nn.Module):
    """Linear or Conv2d, then optional BatchNorm, the activation, optional pool and dropout."""

    def __init__(self, spec: Dense):
        super().__init__()
        self.spec = spec
        if isinstance(spec, Conv):
            k = spec.kernel
            self.layer = nn.Conv2d(spec.inp, spec.out, k, padding=k // 2)
            self.bn = nn.BatchNorm2d(spec.out) if spec.bn else None
        else:
            self.layer = nn.Linear(spec.inp, spec.out)
            self.bn = nn.BatchNorm1d(spec.out) if spec.bn else None
        self.act = ACTIVATIONS["relu" if spec.act is None else spec.act]()
        self.pool = nn.MaxPool2d(spec.pool) if spec.pool else None
        self.dropout = nn.Dropout(spec.dropout) if spec.dropout else None
        # residual blocks (inserted by growth): x + gate * act(...), gate zero at insertion
        self.gate = nn.Parameter(torch.ones(spec.out)) if spec.residual else None

    def pre_activation(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(self.spec, Conv) and x.ndim > 2:
            x = x.flatten(1)
        out = self.layer(x)
        return self.bn(out) if self.bn is not None else out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gate is not None:
            gate = self.gate.view(1, -1, *([1] * (x.dim() - 2)))
            return x + gate * self.act(self.pre_activation(x))
        x = self.act(self.pre_activation(x))
        if self.pool is not None:
            x = self.pool(x)
        if self.dropout is not None:
            x = self.dropout(x)
        return x


class Head(nn.Module):
    """Flatten + Linear classifier (the flatten is the conv -> linear boundary for CNNs)."""

    def __init__(self, spec: LinearHead):
        super().__init__()
        self.spec = spec
        self.layer = nn.Linear(spec.inp, spec.out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x.flatten(1))


def _linear_flops(spec: Dense | LinearHead) -> float:
    return 2.0 * spec.inp * spec.out


def _conv_flops(spec: Conv) -> float:
    # 'same' padding: the conv runs at the block's input resolution (pooling comes after)
    c, h, w = spec.out_shape
    p = spec.pool or 1
    return 2.0 * spec.inp * spec.out * spec.kernel ** 2 * (h * p) * (w * p)


def _widen(*args: Any, **kw: Any) -> Any:
    from stagetrain.models.dense_growth import widen_dense

    return widen_dense(*args, **kw)


def _deepen(*args: Any, **kw: Any) -> Any:
    from stagetrain.models.dense_growth import deepen_dense

    return deepen_dense(*args, **kw)


DENSE_GROWTH = {"widen:net2net": "exact", "widen:random": "none", "deepen:identity": "exact (after ReLU)",
                "deepen:residual_zero": "exact", "deepen:random": "none"}
register(PartType("linear", "block", Block, _linear_flops, DENSE_GROWTH, _widen, _deepen,
                  ("supervised", "autoencoder", "denoising", "rbm")))
register(PartType("conv", "block", Block, _conv_flops, DENSE_GROWTH, _widen, _deepen,
                  ("supervised", "autoencoder", "denoising")))
register(PartType("linear_head", "head", Head, _linear_flops))
