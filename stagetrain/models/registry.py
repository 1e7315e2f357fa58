"""The part-type registry: how each kind of stem, block and head is built, what it costs
and how it may grow.

A model spec names the type of every part (``{"type": "conv", ...}``); its typed record
(``core/parts*.py`` or a family plug's) names the module that registers the type here
(``Part.BUILDER``), which ``part_type`` imports on first use. One chain from a ``"type"`` to
its builder, the same for stagetrain's part types and a family plug's, so a checkpoint of
any installed family rebuilds without its config; nothing is imported that no spec names.

Growth guarantees are stated per operator: ``exact`` (the function is unchanged, up to
float rounding), ``approximate`` (unchanged in expectation, e.g. with noise or dropout)
or ``none`` (a fresh random part).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from stagetrain.core.errors import StagetrainError
from stagetrain.core.partbase import Part
from stagetrain.core.spec import (
    PART_TYPES,
    ModelSpec,
    load_family_parts,
    part_class,
)


@dataclass(frozen=True)
class PartType:
    """One registered kind of stem, block or head.

    ``build(spec)`` returns the module; ``flops(spec)`` its forward FLOPs per sample
    (a multiply-add is 2; only matmuls and convolutions count, as torch's flop counter
    does); ``grow`` maps each growth operator it supports (``widen``, ``deepen:<kind>``,
    ``stack``) to its guarantee; ``widen``/``deepen`` implement them (see growth.py for
    the signatures); ``objectives`` are the layer-wise objectives it can be trained with.
    """

    name: str
    kind: str  # stem | block | head | shared (a module the other parts are cut from)
    build: Callable[[dict[str, Any]], nn.Module]
    flops: Callable[[dict[str, Any]], float]
    grow: dict[str, str] = field(default_factory=dict)
    widen: Callable[..., Any] | None = None
    deepen: Callable[..., Any] | None = None
    objectives: tuple[str, ...] = ("supervised",)
    width_key: str = "out"  # the spec field a widen changes
    shared: bool = False  # build(spec, shared): the part is taken from the model's shared module


PARTS: dict[str, PartType] = {}


def register(part: PartType) -> PartType:
    """Register a part type; its ``build`` and ``flops`` take the part's typed record
    (``core/parts*.py``, a plug's own), a shared module's ``build`` the whole ``ModelSpec``."""
    PARTS[part.name] = part
    return part


def part_type(name: str) -> PartType:
    """How the part type ``name`` is built: its record (``spec.part_class``, one paragraph when
    no family declares it) names the module that registers it (``Part.BUILDER``: stagetrain's
    or the family plug's own code), imported on first use."""
    if name not in PARTS:
        builder = part_class(name).BUILDER
        if builder:
            importlib.import_module(builder)
    if name not in PARTS:
        raise StagetrainError(
            f"The part type {name!r} has a record but no builder: its module "
            f"{part_class(name).BUILDER or '(none named)'} registers none. The family that declares it is incomplete.")
    return PARTS[name]


def build_part(part: Part, kind: str, shared: nn.Module | None = None) -> nn.Module:
    t = part_type(part.TAG)
    if t.kind != kind:
        raise StagetrainError(f"A part of type {t.name!r} is a {t.kind}, not a {kind}.")
    return t.build(part, shared) if t.shared else t.build(part)


def part_flops(part: Part) -> float:
    """A part's forward FLOPs per sample (its type's closed form)."""
    t = part_type(part.TAG)
    return t.flops(part)


def build_shared(spec: ModelSpec) -> nn.Module | None:
    """The module several parts of one model are cut from (``spec.shared``, e.g. a user's
    whole ``nn.Module`` for ``model=custom``), built once from the whole model spec; None
    when the model has none. It is not kept: the parts hold its submodules."""
    if spec.shared is None:
        return None
    t = part_type(spec.shared.TAG)
    if t.kind != "shared":
        raise StagetrainError(f"A part of type {t.name!r} is a {t.kind}, not a shared module.")
    return t.build(spec)


def table() -> list[dict[str, Any]]:
    """Every part type with its growth operators and guarantees (for the docs)."""
    load_family_parts()
    for name in list(PART_TYPES):
        part_type(name)
    return [{"type": t.name, "kind": t.kind, "grow": dict(t.grow), "objectives": list(t.objectives)}
            for t in sorted(PARTS.values(), key=lambda t: (t.kind, t.name))]
