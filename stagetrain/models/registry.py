"""The part-type registry: how each kind of stem, block and head is built, what it costs
and how it may grow.

A model spec names the type of every part (``{"type": "conv", ...}``); this table maps the
name to a ``PartType``. A family module registers its types when it is imported;
``part_type`` imports every family on a miss, so a checkpoint of any registered family
rebuilds without its config.

Growth guarantees are stated per operator: ``exact`` (the function is unchanged, up to
float rounding), ``approximate`` (unchanged in expectation, e.g. with noise or dropout)
or ``none`` (a fresh random part).
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from stagetrain.core.errors import StagetrainError


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
    PARTS[part.name] = part
    return part


def _import_all() -> None:
    for info in pkgutil.iter_modules([str(Path(__file__).parent)]):  # every module of this package
        if info.name not in ("registry", "staged"):
            importlib.import_module(f"stagetrain.models.{info.name}")


def part_type(name: str) -> PartType:
    if name not in PARTS:
        _import_all()
    if name not in PARTS:
        raise StagetrainError(
            f"The model spec names a part of type {name!r}, which no model family registers "
            f"(registered: {', '.join(sorted(PARTS))}). The checkpoint may come from a newer stagetrain "
            "or a family that is not installed.")
    return PARTS[name]


def build_part(spec: dict[str, Any], kind: str, shared: nn.Module | None = None) -> nn.Module:
    t = part_type(spec["type"])
    if t.kind != kind:
        raise StagetrainError(f"A part of type {t.name!r} is a {t.kind}, not a {kind}.")
    return t.build(spec, shared) if t.shared else t.build(spec)


def build_shared(spec: dict[str, Any]) -> nn.Module | None:
    """The module several parts of one model are cut from (``spec["shared"]``, e.g. a user's
    whole ``nn.Module`` for ``model=custom``), built once from the whole model spec; None
    when the model has none. It is not kept: the parts hold its submodules."""
    if not spec.get("shared"):
        return None
    t = part_type(spec["shared"]["type"])
    if t.kind != "shared":
        raise StagetrainError(f"A part of type {t.name!r} is a {t.kind}, not a shared module.")
    return t.build(spec)


def table() -> list[dict[str, Any]]:
    """Every registered part type with its growth operators and guarantees (for the docs)."""
    _import_all()
    return [{"type": t.name, "kind": t.kind, "grow": dict(t.grow), "objectives": list(t.objectives)}
            for t in sorted(PARTS.values(), key=lambda t: (t.kind, t.name))]
