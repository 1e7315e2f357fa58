"""The part types of ``model=custom`` / ``model=torchvision``: a user's ``nn.Module`` built
once per model (the ``custom_module`` shared part) and cut into a stem, blocks and a head.

    spec = {"in_shape": [3, 32, 32], "num_classes": 10,
            "shared": {"type": "custom_module", "target": "torchvision.models.resnet18",
                       "kwargs": {"num_classes": 10}},
            "stem": {"type": "custom_stem", "modules": ["conv1", "bn1", "relu", "maxpool"]},
            "blocks": [{"name": "layer1", "type": "custom_block", "path": "layer1",
                        "out_shape": [64, 8, 8], "flops": ...}, ...],
            "head": {"type": "custom_head", "modules": ["fc"], "input": "pool_flatten",
                     "in": 512, "out": 10, "flops": ...}}

A block *is* the user's submodule (``blocks.layer1.0.conv1.weight``); the stem and head are
sequences of them under their paths with ``_`` for dots (``stem.conv1``, ``head.fc``), so
parameter names are stable across rebuilds. ``native_prefixes`` maps the user module's own
state-dict names to these (loading a torchvision-style ``.pth``). FLOPs per sample are
measured once, when the spec is built (``custom_probe.py``), and stored in the spec. Each part
is built from its typed record (``core/parts.py``); the dict above is how a spec is stored.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from stagetrain.core.errors import StagetrainError
from stagetrain.core.partbase import Part
from stagetrain.core.parts import CustomHead, CustomModule, CustomStem
from stagetrain.core.parts import ViTStem as ViTStemPart
from stagetrain.core.spec import ModelSpec, as_spec
from stagetrain.core.trust import resolve_target
from stagetrain.models.registry import PartType, register

GLUE = {
    "none": lambda x: x,
    "flatten": lambda x: x.flatten(1),
    "pool_flatten": lambda x: F.adaptive_avg_pool2d(x, 1).flatten(1),
    "pool": lambda x: F.adaptive_avg_pool2d(x, 1),
    "cls_token": lambda x: x[:, 0],
}


def safe(path: str) -> str:
    return path.replace(".", "_")


def submodule(module: nn.Module, path: str, key: str) -> nn.Module:
    try:
        return module.get_submodule(path)
    except AttributeError:
        children = ", ".join(n for n, _ in module.named_children())
        raise StagetrainError(
            f"model.{key}: {path!r} is not a submodule of {type(module).__name__}. Its top-level children "
            f"are: {children}; name nested ones with dots (e.g. features.0).") from None


def build_module(spec: ModelSpec) -> nn.Module:
    """The user's module from ``spec.shared`` (target + kwargs), its classifier resized
    to ``spec.head.out`` when they differ."""
    s = spec.shared
    assert isinstance(s, CustomModule)
    build = resolve_target(s.target, "The architecture being built")
    try:
        module = build(**s.kwargs)
    except Exception as e:  # noqa: BLE001 - the user's constructor: any failure is theirs to read
        first = str(e).splitlines()[0][:300] if str(e) else ""
        raise StagetrainError(f"model.target={s.target} could not build the network with kwargs "
                              f"{s.kwargs!r} ({type(e).__name__}: {first}). Check model.kwargs against "
                              "the target's signature.") from None
    if not isinstance(module, nn.Module):
        raise StagetrainError(f"model.target={s.target} returned a {type(module).__name__}, not an nn.Module.")
    _resize_head(module, spec.head)
    return module


def _resize_head(module: nn.Module, head: CustomHead) -> None:
    """Replace the head's last nn.Linear by a fresh one with ``head.out`` outputs."""
    last = None
    for path in head.modules:
        for name, sub in submodule(module, path, "head").named_modules():
            if isinstance(sub, nn.Linear):
                last = (f"{path}.{name}" if name else path, sub)
    if last is None or head.out is None or last[1].out_features == head.out:
        return
    path, lin = last
    parent, _, leaf = path.rpartition(".")
    new = nn.Linear(lin.in_features, int(head.out), bias=lin.bias is not None)
    setattr(module.get_submodule(parent) if parent else module, leaf, new)


def adapt_channels(x: torch.Tensor, channels: int | None) -> torch.Tensor:
    """Repeat a one-channel image to ``channels`` channels (gray -> RGB); else unchanged."""
    if channels and x.dim() == 4 and x.shape[1] == 1:
        return x.expand(-1, channels, -1, -1)
    return x


class Stem(nn.Sequential):
    """The user's stem submodules in order, after the optional gray -> RGB repeat."""

    def __init__(self, spec: CustomStem, shared: nn.Module):
        super().__init__(OrderedDict((safe(p), submodule(shared, p, "stem")) for p in spec.modules))
        self.in_channels = spec.in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(adapt_channels(x, self.in_channels))


VIT_STEM = {"conv": "conv_proj", "class_token": "class_token", "pos_embedding": "pos_embedding",
            "dropout": "dropout"}  # vit_stem spec key -> attribute


class ViTStem(nn.Module):
    """torchvision's VisionTransformer input: patch projection, class token, position
    embedding and dropout (the part of its forward before the encoder layers)."""

    def __init__(self, spec: ViTStemPart, shared: nn.Module):
        super().__init__()
        self.in_channels = spec.in_channels
        self.conv_proj = submodule(shared, spec.conv, "stem")
        self.class_token = shared.get_parameter(spec.class_token)
        self.pos_embedding = shared.get_parameter(spec.pos_embedding)
        self.dropout = submodule(shared, spec.dropout, "stem")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_proj(adapt_channels(x, self.in_channels)).flatten(2).transpose(1, 2)
        x = torch.cat([self.class_token.expand(x.shape[0], -1, -1), x], dim=1)
        return self.dropout(x + self.pos_embedding)


class Head(nn.Sequential):
    """The parameter-free ``input`` glue (e.g. global average pool + flatten), then the
    user's head submodules in order."""

    def __init__(self, spec: CustomHead, shared: nn.Module):
        super().__init__(OrderedDict((safe(p), submodule(shared, p, "head")) for p in spec.modules))
        self.glue = GLUE["none" if spec.input is None else spec.input]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(self.glue(x))


def native_prefixes(spec: ModelSpec | dict[str, Any]) -> list[tuple[str, str]]:
    """(user module name, StagedModel name) for every part: ``layer1`` -> ``blocks.layer1``."""
    arch = as_spec(spec)
    stem = arch.stem
    pairs = []
    if isinstance(stem, ViTStemPart):
        pairs += [(getattr(stem, k), f"stem.{attr}") for k, attr in VIT_STEM.items()]
    elif isinstance(stem, CustomStem):
        pairs += [(p, f"stem.{safe(p)}") for p in stem.modules]
    pairs += [(b.path, f"blocks.{b.name}") for b in arch.blocks]
    pairs += [(p, f"head.{safe(p)}") for p in arch.head.modules]
    return sorted(pairs, key=lambda pair: -len(pair[0]))


def rename(key: str, pairs: list[tuple[str, str]]) -> str | None:
    """``key`` under the first (longest) matching prefix's new name; None when none matches."""
    for old, new in pairs:
        if key == old or key.startswith(old + "."):
            return new + key[len(old):]
    return None


def _flops(spec: Part) -> float:
    """The forward FLOPs per sample the probe measured (``custom_probe``)."""
    flops = getattr(spec, "flops", None)
    return float(0.0 if flops is None else flops)


register(PartType("custom_module", "shared", build_module, _flops))
register(PartType("custom_stem", "stem", Stem, _flops, shared=True))
register(PartType("vit_stem", "stem", ViTStem, _flops, shared=True))
register(PartType("custom_block", "block", lambda spec, shared: submodule(shared, spec.path, "blocks"),
                  _flops, shared=True))
register(PartType("custom_head", "head", Head, _flops, shared=True))
