"""Auxiliary classifier heads: the helper (kind ``aux_head``) that a supervised greedy stage
trains with its block, dropped at the stage end. The helper's ``head`` picks one of ``HEADS``:

* ``linear`` -- Linear on vectors; [k plain 3x3 convs +] global average pooling + Linear
  on feature maps (``extra_layers`` = k, the old integer ``strategy.aux_head``); mean over
  positions + LayerNorm + Linear on sequences.
* ``conv``   -- the layerCNN head (Belilovsky, Eickenberg, Oyallon 2019, "Greedy Layerwise
  Learning Can Scale to ImageNet", github.com/eugenium/layerCNN, and the ``cnn`` auxiliary
  net of github.com/eugenium/DGL): k 3x3 convs each with BatchNorm + ReLU, average
  pooling to a grid x grid map, BatchNorm, Linear.
* ``mlp_sr`` -- the default head of Decoupled Greedy Learning (Belilovsky, Eickenberg,
  Oyallon 2020, "Decoupled Greedy Learning of CNNs", github.com/eugenium/DGL, its
  ``mlp-sr`` auxiliary net): spatial reduction (average pooling to ceil(H/4) x ceil(W/4)),
  k 1x1 convs each with BatchNorm + ReLU, average pooling to grid x grid, then an MLP of
  ``mlp_layers`` hidden layers (Linear + BatchNorm1d + ReLU, width = width x grid^2) and
  a Linear.

``conv`` and ``mlp_sr`` read feature maps [C, H, W] only. A spec's missing options take
the published defaults (``DEFAULTS``; ``width``: the block's channels).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from stagetrain.nn import stagehelpers as helpers

HEADS = ("linear", "conv", "mlp_sr")
# The published defaults (both repositories' CIFAR scripts): the layerCNN / DGL-cnn head has
# 2 auxiliary 3x3 convs and a 2x2 grid; DGL's mlp-sr reduces space 4x per side, has 3 1x1
# convs, a 2x2 grid and 3 hidden MLP layers. Width: the block's own channels in both.
DEFAULTS: dict[str, dict[str, int]] = {
    "conv": {"layers": 2, "grid": 2},
    "mlp_sr": {"layers": 3, "grid": 2, "reduce": 4, "mlp_layers": 3},
}


class MeanOverPositions(nn.Module):
    """Mean over a sequence's positions, skipping padding (all-zero rows, see models/transformer.py)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        keep = x.ne(0).any(-1).unsqueeze(-1).to(x.dtype)
        return (x * keep).sum(1) / keep.sum(1).clamp_min(1)


class AuxHead(nn.Module):
    """The ``linear`` head: Linear (vectors), [k plain convs] + global average pool + Linear
    (feature maps [C, H, W]), or mean over positions + LayerNorm + Linear (sequences [T, D],
    like a pre-LN Transformer's pooled head). Its module names are the ones old checkpoints hold."""

    def __init__(self, spec: helpers.AuxHead):
        super().__init__()
        shape = spec.in_shape
        layers: list[nn.Module] = []
        if len(shape) == 3:
            c = shape[0]
            for _ in range(spec.extra_layers or 0):
                layers += [nn.Conv2d(c, c, 3, padding=1), nn.ReLU()]
            layers += [nn.AdaptiveAvgPool2d(1)]
            width = c
        elif len(shape) == 2:  # LayerNorm without affine: a sequence head's final norm at its init
            layers += [MeanOverPositions(), nn.LayerNorm(shape[1], elementwise_affine=False)]
            width = shape[1]
        else:
            width = shape[0]
        self.body = nn.Sequential(*layers, nn.Flatten())
        self.layer = nn.Linear(width, spec.out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(self.body(x))


def _conv_bn_relu(cin: int, cout: int, kernel: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]


def _option(spec: helpers.AuxHead, key: str) -> int:
    value = getattr(spec, key)
    return int(DEFAULTS[spec.head][key] if value is None else value)


class ConvAuxHead(nn.Module):
    """``conv``: k x (3x3 conv, BN, ReLU) -> average pool to grid x grid -> BN -> Linear."""

    def __init__(self, spec: helpers.AuxHead):
        super().__init__()
        c = int(spec.in_shape[0])
        width, k, grid = int(spec.width or c), _option(spec, "layers"), _option(spec, "grid")
        layers: list[nn.Module] = []
        for i in range(k):
            layers += _conv_bn_relu(c if i == 0 else width, width, 3)
        width = width if k else c
        self.body = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(grid), nn.BatchNorm2d(width), nn.Flatten())
        self.layer = nn.Linear(width * grid * grid, spec.out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(self.body(x))


class MlpSrAuxHead(nn.Module):
    """``mlp_sr``: average pool to ceil(H/r) x ceil(W/r) -> k x (1x1 conv, BN, ReLU) -> average
    pool to grid x grid -> m x (Linear, BatchNorm1d, ReLU) -> Linear."""

    def __init__(self, spec: helpers.AuxHead):
        super().__init__()
        c, h, w = (int(v) for v in spec.in_shape)
        width, k, grid = int(spec.width or c), _option(spec, "layers"), _option(spec, "grid")
        r = _option(spec, "reduce")
        layers: list[nn.Module] = [nn.AdaptiveAvgPool2d((math.ceil(h / r), math.ceil(w / r)))]
        for i in range(k):
            layers += _conv_bn_relu(c if i == 0 else width, width, 1)
        width = width if k else c
        layers += [nn.AdaptiveAvgPool2d(grid), nn.Flatten()]
        d = width * grid * grid
        for _ in range(_option(spec, "mlp_layers")):
            layers += [nn.Linear(d, d), nn.BatchNorm1d(d), nn.ReLU()]
        self.body = nn.Sequential(*layers)
        self.layer = nn.Linear(d, spec.out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(self.body(x))


def build_aux_head(spec: helpers.AuxHead | Mapping[str, Any]) -> nn.Module:
    """The auxiliary head a helper of kind ``aux_head`` names (its typed record, ``stagehelpers.AuxHead``,
    or that record's plain dict; no ``head``: ``linear``)."""
    if not isinstance(spec, helpers.AuxHead):
        spec = helpers.from_dict({"kind": "aux_head", **spec})
    head = spec.head or "linear"
    return {"linear": AuxHead, "conv": ConvAuxHead, "mlp_sr": MlpSrAuxHead}[head](spec)
