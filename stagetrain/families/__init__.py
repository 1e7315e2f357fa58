"""Model families: ``model=<name>`` is the module ``stagetrain/families/<name>.py`` plus
``conf/model/<name>.yaml``, found without being registered anywhere.

A family module has no torch import (the config layer loads it at start-up) and defines:

* ``Config`` -- its options dataclass (Hydra's schema for ``model=<name>``);
* ``validate(model, dataset)`` -- raises ``StagetrainError`` for values it cannot build;
* ``spec(model, in_shape, num_classes)`` -- the plain-dict architecture spec, whose part
  types are registered by a module under ``stagetrain/models/``; the stem and every block
  record their ``out_shape`` (without the batch dimension);
* optionally ``grow_widths(model)`` / ``with_grow_widths(model, widths)`` -- the per-block
  widths ``strategy=grow`` schedules (without them, grow refuses the family);
* optionally ``grow_schedule(model)`` -- grow's default per-stage widths (when neither
  ``strategy.widths`` nor ``strategy.width_factor`` is set); without it, the final widths
  / 4, / 2, / 1 (``scaled_schedule``).
"""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path
from types import ModuleType

from stagetrain.errors import StagetrainError

FAMILIES = tuple(sorted(m.name for m in pkgutil.iter_modules([str(Path(__file__).parent)])))


def family(name: str) -> ModuleType:
    if name not in FAMILIES:
        raise StagetrainError(f"model={name} is not a model family; valid: {', '.join(FAMILIES)}.")
    return importlib.import_module(f"stagetrain.families.{name}")


def build_spec(model_cfg: object, in_shape: tuple[int, ...], num_classes: int) -> dict:
    """The architecture spec of ``model=<family>`` on inputs of ``in_shape``."""
    return family(model_cfg.name).spec(model_cfg, tuple(in_shape), int(num_classes))


def grow_widths(model: object) -> list[int]:
    fam = family(model.name)  # type: ignore[attr-defined]
    if not hasattr(fam, "grow_widths"):
        growable = [n for n in FAMILIES if hasattr(family(n), "grow_widths")]
        raise StagetrainError(
            f"strategy=grow cannot grow model={model.name}: its blocks are not of registered growable "  # type: ignore[attr-defined]
            f"types. Families grow supports: {', '.join(growable)}.")
    return list(fam.grow_widths(model))


def scaled_schedule(final: list[int], factor: float = 2, stages: int = 3) -> list[list[int]]:
    """``stages`` stages ending at ``final``, each ``factor`` times narrower than the next."""
    return [[max(1, round(w / factor ** (stages - 1 - k))) for w in final] for k in range(stages)]


def grow_schedule(model: object) -> list[list[int]]:
    """grow's default schedule for ``model``: the family's own, else the halving schedule."""
    final = grow_widths(model)
    fam = family(model.name)  # type: ignore[attr-defined]
    if hasattr(fam, "grow_schedule"):
        return [list(w) for w in fam.grow_schedule(model)]
    return scaled_schedule(final)
