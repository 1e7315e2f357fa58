"""LoRA on any ``nn.Linear`` / ``nn.Conv2d`` (and transformers' GPT-2 ``Conv1D``, a linear layer
whose weight is stored in x out) of a model, chosen by module-name pattern.

A target layer computes ``layer(x) + alpha/rank * B(A(x))`` with B zero at insertion, so
adding adapters leaves the function unchanged; merging folds ``alpha/rank * B A`` into the
layer's weight. The adapted layer keeps its weight and bias under the same names (the
adapters add ``lora_a``/``lora_b`` beside them), so a checkpoint's base keys are stable.
The spec records the resolved target names: its ``lora`` (``core/spec.Lora``: ``rank``, ``alpha``, ``targets``).
``StagedModel`` attaches them from its spec; adding and merging (new models) are
``growth.ops.add_lora`` / ``merge_lora``.
"""

from __future__ import annotations

import fnmatch
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from stagetrain.core.errors import StagetrainError


class LoRALinear(nn.Linear):
    def __init__(self, base: nn.Linear, rank: int, alpha: float):
        super().__init__(base.in_features, base.out_features, base.bias is not None,
                         device=base.weight.device, dtype=base.weight.dtype)
        self.lora_a = nn.Parameter(torch.empty(rank, base.in_features, device=base.weight.device))
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank, device=base.weight.device))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))
        self.lora_scale = alpha / rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) + self.lora_scale * F.linear(F.linear(x, self.lora_a), self.lora_b)

    def delta(self) -> torch.Tensor:
        return self.lora_scale * self.lora_b @ self.lora_a


class LoRAConv2d(nn.Conv2d):
    """A: a rank-r conv with the layer's kernel, stride and padding; B: a 1x1 conv."""

    def __init__(self, base: nn.Conv2d, rank: int, alpha: float):
        if base.groups != 1:
            raise StagetrainError("LoRA on grouped or depthwise convolutions is not supported; leave them out of "
                                  "strategy.lora.targets.")
        super().__init__(base.in_channels, base.out_channels, base.kernel_size, base.stride, base.padding,
                         base.dilation, 1, base.bias is not None, base.padding_mode,
                         device=base.weight.device, dtype=base.weight.dtype)
        self.lora_a = nn.Parameter(torch.empty(rank, base.in_channels, *base.kernel_size, device=base.weight.device))
        self.lora_b = nn.Parameter(torch.zeros(base.out_channels, rank, 1, 1, device=base.weight.device))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))
        self.lora_scale = alpha / rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        low = F.conv2d(x, self.lora_a, None, self.stride, self.padding, self.dilation)
        return super().forward(x) + self.lora_scale * F.conv2d(low, self.lora_b)

    def delta(self) -> torch.Tensor:
        return self.lora_scale * torch.einsum("or,rikl->oikl", self.lora_b.flatten(1), self.lora_a)


def is_conv1d(module: nn.Module) -> bool:
    """transformers' ``Conv1D`` (GPT-2's projections): y = x W + b with W in x out."""
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf") and getattr(module, "weight", None) is not None


def adaptable(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear | nn.Conv2d) or is_conv1d(module)


class LoRAConv1D(nn.Module):
    """transformers' ``Conv1D`` with an adapter: the same ``weight`` (in x out), ``bias`` and
    ``nf``, so the base keys and a merge into a plain ``Conv1D`` are unchanged."""

    def __init__(self, base: nn.Module, rank: int, alpha: float):
        super().__init__()
        n_in, self.nf = base.weight.shape
        self.weight = nn.Parameter(torch.empty_like(base.weight))
        self.bias = nn.Parameter(torch.empty_like(base.bias))
        self.lora_a = nn.Parameter(torch.empty(rank, n_in, device=base.weight.device))
        self.lora_b = nn.Parameter(torch.zeros(self.nf, rank, device=base.weight.device))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))
        self.lora_scale = alpha / rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.addmm(self.bias, x.reshape(-1, x.size(-1)), self.weight).view(*x.shape[:-1], self.nf)
        return out + self.lora_scale * F.linear(F.linear(x, self.lora_a), self.lora_b)

    def delta(self) -> torch.Tensor:
        return (self.lora_scale * self.lora_b @ self.lora_a).T  # in x out, as the weight


LORA_TYPES = (LoRALinear, LoRAConv2d, LoRAConv1D)


def _adapted(module: nn.Module, rank: int, alpha: float) -> nn.Module:
    cls = LoRAConv1D if is_conv1d(module) else LoRALinear if isinstance(module, nn.Linear) else LoRAConv2d
    new = cls(module, rank, alpha)
    new.load_state_dict(module.state_dict(), strict=False)
    return new


def _set(root: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, module)


def resolve_targets(model: nn.Module, patterns: list[str]) -> list[str]:
    """Full names of the Linear/Conv2d modules inside the blocks that the patterns select.

    A pattern matches a module's name within its block (``attn.qkv``, ``mlp.fc*``,
    ``layer``), its full name (``blocks.block2.layer``) or its own last name, as PEFT's
    ``target_modules`` do (``q_proj`` in a model=hf block); no patterns: every Linear."""
    out = []
    for bname, block in model.blocks.items():
        for name, m in block.named_modules():
            if not name or not adaptable(m):
                continue
            full = f"blocks.{bname}.{name}"
            leaf = name.rpartition(".")[2]
            hit = (any(fnmatch.fnmatchcase(name, p) or fnmatch.fnmatchcase(full, p) or fnmatch.fnmatchcase(leaf, p)
                       for p in patterns)
                   if patterns else isinstance(m, nn.Linear) or is_conv1d(m))
            if hit:
                out.append(full)
    return out


def attach(model: nn.Module, lora: dict[str, Any]) -> None:
    """Replace each target layer by its adapted version (weights kept, B = 0). A spec's lora
    entry may come from a file: its targets must be Linear/Conv2d layers inside the blocks."""
    targets = lora.get("targets") if isinstance(lora, dict) else None
    if not isinstance(targets, list) or not all(isinstance(t, str) for t in targets) \
            or not isinstance(lora.get("rank"), int) or not isinstance(lora.get("alpha"), int | float):
        raise StagetrainError(f"the spec's lora entry {str(lora)[:200]} is not {{rank: int, alpha: number, "
                              "targets: [layer names]}")
    for name in targets:
        try:
            layer = model.get_submodule(name)
        except AttributeError:
            layer = None
        if not name.startswith("blocks.") or layer is None or not adaptable(layer):
            raise StagetrainError(f"the spec's lora target {name!r} is not a Linear, Conv2d or Conv1D layer inside "
                                  "the blocks")
        _set(model, name, _adapted(layer, int(lora["rank"]), float(lora["alpha"])))
