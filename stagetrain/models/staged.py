"""StagedModel: an optional stem, ordered named blocks and a head, rebuilt exactly from an
architecture spec (``core/spec.py``'s typed ``ModelSpec``, or its plain dict).

The architecture spec is the only thing needed to rebuild a model: strategies that change
the architecture (growth, added layers, adapters) change the spec, so a checkpoint reloads
without the config that produced it. Each part's ``type`` names a registered part type
(``models/registry.py``). Trainable groups are ``stem`` (when there is one), the block
names, and ``head``. A spec may name a ``shared`` module (``model=custom``: the user's
whole network), built once; its parts are then submodules of that one instance. ``arch`` is
the typed spec; ``spec`` its plain dict (what checkpoints and run.json store), a fresh copy.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from stagetrain.core.spec import ModelSpec, as_spec
from stagetrain.models.registry import build_part, build_shared

DEFAULT_BLOCK = "linear"


class StagedModel(nn.Module):
    """``stem`` (optional), blocks ``block1..blockL`` applied in order, then ``head``."""

    def __init__(self, spec: ModelSpec | dict[str, Any]):
        super().__init__()
        self.arch = copy.deepcopy(as_spec(spec))
        arch = self.arch
        shared = build_shared(arch)  # one module the parts are cut from (model=custom), or None
        if arch.stem is not None:
            self.stem = build_part(arch.stem, "stem", shared)
        self.blocks = nn.ModuleDict({b.name: build_part(b, "block", shared) for b in arch.blocks})
        self.head = build_part(arch.head, "head", shared)
        if hasattr(self.head, "bind"):  # a head that reads another part (an LM head tied to the embedding)
            self.head.bind(self)
        if arch.lora is not None:
            from stagetrain.models.lora import attach

            attach(self, arch.lora.to_dict())

    @property
    def spec(self) -> dict[str, Any]:
        """The plain dict of the architecture (a fresh copy: change ``arch``, or build anew)."""
        return self.arch.to_dict()

    @property
    def block_names(self) -> list[str]:
        return list(self.blocks.keys())

    @property
    def group_names(self) -> list[str]:
        """Every trainable group, input to output: stem (if any), blocks, head."""
        return (["stem"] if self.has_stem else []) + self.block_names + ["head"]

    @property
    def has_stem(self) -> bool:
        return "stem" in self._modules

    def features(self, x: torch.Tensor, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Output of blocks[start:stop] applied to ``x``, the input of block ``start``
        (block 0's input is the model input: the stem runs with block 0, so an empty
        prefix ``features(x, 0, 0)`` is the model input itself)."""
        if start == 0 and self.has_stem and (stop is None or stop > 0):
            x = self.stem(x)
        for name in self.block_names[start:stop]:
            x = self.blocks[name](x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def group(self, name: str) -> nn.Module:
        """A block by name, the stem, or the head."""
        if name in ("head", "stem"):
            return getattr(self, name)
        return self.blocks[name]

    def feature_shape(self, index: int) -> tuple[int, ...]:
        """Shape (without batch) of the output of block ``index`` (-1: the model input)."""
        if index < 0:
            return tuple(self.arch.in_shape)
        return tuple(self.arch.blocks[index].out_shape or ())


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def trainable_parameters(model: nn.Module, helper: nn.Module | None = None) -> int:
    """Parameters a stage trains: the model's with requires_grad, plus its helper's."""
    own = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return own + (count_parameters(helper) if helper is not None else 0)
