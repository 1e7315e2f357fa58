"""The part types of ``model=resnet``: the ``resnet_stem``, ``resnet_stage`` blocks (one
stage = a sequence of residual units at one resolution) and the ``pool_linear`` head.

    spec = {"in_shape": [1, 8, 8], "num_classes": 10,
            "stem": {"type": "resnet_stem", "kind": "cifar", "in": 1, "out": 16, "in_hw": [8, 8],
                     "out_shape": [16, 8, 8]},
            "blocks": [{"name": "block1", "type": "resnet_stage", "unit": "basic", "in": 16, "out": 16,
                        "mid": 16, "units": 1, "stride": 1, "shortcut": "identity", "in_hw": [8, 8],
                        "out_shape": [16, 8, 8]}, ...],
            "head": {"type": "pool_linear", "in": 64, "out": 10}}

A unit is ``relu(branch(x) + shortcut(x))``; the first unit of a stage carries its stride
and, when ``shortcut`` is ``projection``, a 1x1 conv + BN shortcut; the other units keep
the shape and add ``x`` itself. ``basic``: 3x3 conv (mid) + BN + ReLU, 3x3 conv (out) + BN,
with mid = out. ``bottleneck``: 1x1 (mid) + BN + ReLU, 3x3 stride (mid) + BN + ReLU,
1x1 (out) + BN, with mid = out / 4 when built (a widened stage keeps its mid).
Growth operators are in ``resnet_growth.py``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from stagetrain.core import parts
from stagetrain.models.registry import PartType, register
from stagetrain.models.resnet_spec import conv_out


class Stem(nn.Module):
    """cifar: 3x3 conv + BN + ReLU; imagenet: 7x7 stride-2 conv + BN + ReLU + 3x3 stride-2 max-pool."""

    def __init__(self, spec: parts.ResnetStem):
        super().__init__()
        self.spec = spec
        k, s = (3, 1) if spec.kind == "cifar" else (7, 2)
        self.conv = nn.Conv2d(spec.inp, spec.out, k, s, k // 2, bias=False)
        self.bn = nn.BatchNorm2d(spec.out)
        self.pool = nn.MaxPool2d(3, 2, 1) if spec.kind == "imagenet" else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn(self.conv(x)))
        return self.pool(x) if self.pool is not None else x


class Shortcut(nn.Module):
    """The projection shortcut: 1x1 conv (with the unit's stride) + BN."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 1, stride, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


def _conv_bn(cin: int, cout: int, kernel: int, stride: int) -> tuple[nn.Conv2d, nn.BatchNorm2d]:
    return nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False), nn.BatchNorm2d(cout)


class Unit(nn.Module):
    """One residual unit: ``relu(branch(x) + shortcut(x))``."""

    def __init__(self, kind: str, cin: int, mid: int, cout: int, stride: int, projection: bool):
        super().__init__()
        self.kind = kind
        if kind == "basic":
            self.conv1, self.bn1 = _conv_bn(cin, mid, 3, stride)
            self.conv2, self.bn2 = _conv_bn(mid, cout, 3, 1)
        else:
            self.conv1, self.bn1 = _conv_bn(cin, mid, 1, 1)
            self.conv2, self.bn2 = _conv_bn(mid, mid, 3, stride)
            self.conv3, self.bn3 = _conv_bn(mid, cout, 1, 1)
        self.shortcut = Shortcut(cin, cout, stride) if projection else nn.Identity()

    @property
    def last_bn(self) -> nn.BatchNorm2d:
        """The BN that ends the residual branch (its scale zero: the branch adds nothing)."""
        return self.bn2 if self.kind == "basic" else self.bn3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        if self.kind == "basic":
            out = self.bn2(self.conv2(out))
        else:
            out = self.bn3(self.conv3(F.relu(self.bn2(self.conv2(out)))))
        return F.relu(out + self.shortcut(x))


class Stage(nn.Module):
    """``units`` residual units; the first takes the stage's input channels and stride."""

    def __init__(self, spec: parts.ResnetStage):
        super().__init__()
        self.spec = spec
        kind, mid, out = spec.unit, spec.mid, spec.out
        self.units = nn.ModuleList(
            Unit(kind, spec.inp if i == 0 else out, mid, out, spec.stride if i == 0 else 1,
                 i == 0 and spec.shortcut == "projection")
            for i in range(spec.units))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for unit in self.units:
            x = unit(x)
        return x


class PoolLinear(nn.Module):
    """Global average pool + Linear; ``layer`` is the Linear (an aux head's ``layer`` loads into it)."""

    def __init__(self, spec: parts.PoolLinear):
        super().__init__()
        self.spec = spec
        self.layer = nn.Linear(spec.inp, spec.out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(F.adaptive_avg_pool2d(x, 1).flatten(1))


def _stem_flops(spec: parts.ResnetStem) -> float:
    k, s = (3, 1) if spec.kind == "cifar" else (7, 2)
    h, w = (conv_out(n, k, s, k // 2) for n in spec.in_hw)
    return 2.0 * spec.inp * spec.out * k * k * h * w


def _stage_flops(spec: parts.ResnetStage) -> float:
    """Per unit: its convs at their output resolution (the first unit's at the stride)."""
    (h, w), (ho, wo) = spec.in_hw, spec.out_shape[1:]
    mid, out = spec.mid, spec.out
    total = 0.0
    for i in range(spec.units):
        cin = spec.inp if i == 0 else out
        if spec.unit == "basic":
            total += 9 * cin * mid * ho * wo + 9 * mid * out * ho * wo
        else:
            hin, win = (h, w) if i == 0 else (ho, wo)
            total += cin * mid * hin * win + 9 * mid * mid * ho * wo + mid * out * ho * wo
        if i == 0 and spec.shortcut == "projection":
            total += cin * out * ho * wo
    return 2.0 * total


def _head_flops(spec: parts.PoolLinear) -> float:
    return 2.0 * spec.inp * spec.out


def _widen(*args: Any, **kw: Any) -> Any:
    from stagetrain.models.resnet_growth import widen_stage

    return widen_stage(*args, **kw)


def _deepen(*args: Any, **kw: Any) -> Any:
    from stagetrain.models.resnet_growth import deepen_stage

    return deepen_stage(*args, **kw)


STAGE_GROWTH = {  # see resnet_growth.py for what each guarantee rests on
    "widen:net2net": "exact (eval mode)", "widen:random": "none",
    "deepen:residual_zero": "exact", "deepen:identity": "exact (a zero-scale unit after ReLU)",
    "deepen:random": "none",
}
register(PartType("resnet_stem", "stem", Stem, _stem_flops))
register(PartType("resnet_stage", "block", Stage, _stage_flops, STAGE_GROWTH, _widen, _deepen, ("supervised",)))
register(PartType("pool_linear", "head", PoolLinear, _head_flops))
