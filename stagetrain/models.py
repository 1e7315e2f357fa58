"""StagedModel: an ordered list of named blocks plus a head, rebuilt exactly from a plain dict.

The architecture spec is the only thing needed to rebuild a model: strategies that change
the architecture (growth, added layers) change the spec, so a checkpoint reloads without
the config that produced it.

    spec = {"in_shape": [1, 8, 8], "num_classes": 10,
            "blocks": [{"name": "block1", "type": "linear", "in": 64, "out": 256,
                        "act": "relu", "bn": False, "dropout": 0.0}, ...],
            "head": {"in": 64, "out": 10}}
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import nn

ACTIVATIONS = {
    "relu": nn.ReLU, "leaky_relu": nn.LeakyReLU, "gelu": nn.GELU,
    "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "identity": nn.Identity,
}


class Block(nn.Module):
    """Linear or Conv2d, then optional BatchNorm, the activation, optional pool and dropout."""

    def __init__(self, spec: dict[str, Any]):
        super().__init__()
        self.spec = dict(spec)
        if spec["type"] == "linear":
            self.layer = nn.Linear(spec["in"], spec["out"])
            self.bn = nn.BatchNorm1d(spec["out"]) if spec.get("bn") else None
        elif spec["type"] == "conv":
            k = spec["kernel"]
            self.layer = nn.Conv2d(spec["in"], spec["out"], k, padding=k // 2)
            self.bn = nn.BatchNorm2d(spec["out"]) if spec.get("bn") else None
        else:
            raise ValueError(f"unknown block type {spec['type']!r}")
        self.act = ACTIVATIONS[spec.get("act", "relu")]()
        self.pool = nn.MaxPool2d(spec["pool"]) if spec.get("pool") else None
        self.dropout = nn.Dropout(spec["dropout"]) if spec.get("dropout") else None
        # LoRA adapters (finetune mode lora): layer(x) + alpha/rank * B(A(x)), B zero at insertion
        lora = spec.get("lora")
        if lora and spec["type"] == "linear":
            self.lora_a = nn.Parameter(torch.empty(lora["rank"], spec["in"]))
            self.lora_b = nn.Parameter(torch.zeros(spec["out"], lora["rank"]))
            nn.init.kaiming_uniform_(self.lora_a, a=5**0.5)
            self.lora_scale = lora["alpha"] / lora["rank"]
        else:
            self.lora_a = self.lora_b = None
        # residual blocks (inserted by growth): x + gate * act(...), gate zero at insertion
        self.gate = nn.Parameter(torch.ones(spec["out"])) if spec.get("residual") else None

    def pre_activation(self, x: torch.Tensor) -> torch.Tensor:
        if self.spec["type"] == "linear" and x.ndim > 2:
            x = x.flatten(1)
        out = self.layer(x)
        if self.lora_a is not None:
            out = out + self.lora_scale * nn.functional.linear(nn.functional.linear(x, self.lora_a), self.lora_b)
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

    def __init__(self, spec: dict[str, Any]):
        super().__init__()
        self.spec = dict(spec)
        self.layer = nn.Linear(spec["in"], spec["out"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x.flatten(1))


class StagedModel(nn.Module):
    """Named blocks ``block1..blockL`` applied in order, then ``head``."""

    def __init__(self, spec: dict[str, Any]):
        super().__init__()
        self.spec = copy.deepcopy(spec)
        self.blocks = nn.ModuleDict({b["name"]: Block(b) for b in spec["blocks"]})
        self.head = Head(spec["head"])

    @property
    def block_names(self) -> list[str]:
        return list(self.blocks.keys())

    def features(self, x: torch.Tensor, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Output of blocks[start:stop] applied to ``x`` (the input of block ``start``)."""
        for name in self.block_names[start:stop]:
            x = self.blocks[name](x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def group(self, name: str) -> nn.Module:
        """A block by name, or the head."""
        return self.head if name == "head" else self.blocks[name]

    def feature_shape(self, index: int) -> tuple[int, ...]:
        """Shape (without batch) of the output of block ``index`` (-1: the model input)."""
        if index < 0:
            return tuple(self.spec["in_shape"])
        b = self.spec["blocks"][index]
        return tuple(b["out_shape"])


def build_spec(model_cfg: Any, in_shape: tuple[int, ...], num_classes: int) -> dict[str, Any]:
    """The architecture spec for ``model=mlp|cnn`` on inputs of ``in_shape``."""
    blocks: list[dict[str, Any]] = []
    if model_cfg.name == "mlp":
        width = math.prod(in_shape)
        for i, out in enumerate(model_cfg.widths):
            blocks.append({
                "name": f"block{i + 1}", "type": "linear", "in": width, "out": int(out),
                "act": model_cfg.activation, "bn": bool(model_cfg.bn),
                "dropout": float(model_cfg.dropout), "out_shape": [int(out)],
            })
            width = int(out)
        head_in = width
    else:
        c, h, w = in_shape
        for i, out in enumerate(model_cfg.channels):
            pool = int(model_cfg.pool) if model_cfg.pool and min(h, w) >= 2 * model_cfg.pool else 0
            if pool:
                h, w = h // pool, w // pool
            blocks.append({
                "name": f"block{i + 1}", "type": "conv", "in": c, "out": int(out),
                "kernel": int(model_cfg.kernel), "pool": pool, "act": model_cfg.activation,
                "bn": bool(model_cfg.bn), "dropout": float(model_cfg.dropout),
                "out_shape": [int(out), h, w],
            })
            c = int(out)
        head_in = c * h * w
    return {
        "in_shape": list(in_shape), "num_classes": int(num_classes),
        "blocks": blocks, "head": {"in": head_in, "out": int(num_classes)},
    }


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def trainable_parameters(model: nn.Module, helper: nn.Module | None = None) -> int:
    """Parameters a stage trains: the model's with requires_grad, plus its helper's."""
    own = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return own + (count_parameters(helper) if helper is not None else 0)
