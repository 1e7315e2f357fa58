"""Model families: ``model=<name>`` is a plug (``core/plugs.py``): the folder
``stagetrain/families/<name>/`` (or an installed package under the entry-point group
``stagetrain.families``) plus ``conf/model/<name>.yaml``, found without being registered.

A family's ``config.py`` has no torch import (the config layer loads it at start-up) and defines:

* ``Config`` -- its options dataclass (Hydra's schema for ``model=<name>``);
* ``validate(model, dataset)`` -- raises ``StagetrainError`` for values it cannot build;
* ``spec(model, in_shape, num_classes)`` -- the plain-dict architecture spec, whose part
  types are registered by a module under ``stagetrain/models/``; the stem and every block
  record their ``out_shape`` (without the batch dimension);
* optionally ``grow_widths(model)`` / ``with_grow_widths(model, widths)`` -- the per-block
  widths ``strategy=grow`` schedules (without them, grow refuses the family);
* optionally ``grow_schedule(model)`` -- grow's default per-stage widths (when neither
  ``strategy.widths`` nor ``strategy.width_factor`` is set); without it, the final widths
  / 4, / 2, / 1 (``scaled_schedule``);
* optionally ``resolve(model, dataset)`` -- the model with values that follow the data
  filled in (a family without it cannot read token ids);
* optionally ``batch_norm(model)`` -- whether the model normalises over the batch;
* optionally ``trust_targets(model)`` -- the callables its config names (``core/trust.py``);
* optionally ``is_lm(model)``, ``as_classifier(spec, classes, model)`` and
  ``with_mask_token(spec)`` -- a language model's head, and what fine-tuning one on labels
  or masked-token pretraining starts from, and ``check_text_pretrain(model, objective)`` --
  a family whose layers fix causality checks in-run lm/mlm pretraining itself;
* optionally ``init_weights(model, staged_model)`` -- a fresh run's weights the family's own
  way (``model=hf``: transformers' init), and ``export(model, staged_model, run_dir)`` -- the
  finished model written in the family's own format (``<run>/hf/``).
"""

from __future__ import annotations

import contextlib
from types import ModuleType
from typing import Any

from stagetrain.core import trust
from stagetrain.core.errors import StagetrainError
from stagetrain.core.plugs import axis
from stagetrain.datasets import inputs

FAMILIES = axis("model")


def family(name: str) -> ModuleType:
    """The family plug ``model=<name>``, or one paragraph naming the valid ones."""
    return FAMILIES.plug(name)


def vouched_by(cfg: Any) -> contextlib.AbstractContextManager[None]:
    """``trust.vouched`` for what a launch's own config (a DictConfig or a dict) names: its
    ``trust_targets`` and what its model family's ``trust_targets(model)`` hook reads in it."""
    model = cfg.get("model") or {}
    hook = getattr(family(model.get("name")), "trust_targets", None) if model.get("name") in FAMILIES else None
    return trust.vouched(trust.named_by(cfg) | {str(t) for t in (hook(model) if hook else [])})


def validate(model: Any, ds: Any, batch_size: int) -> Any:
    """The model settings checked against the data (``ds``) and the batch size, with values
    left to follow the data filled in (the family's optional ``resolve``: e.g. a transformer's
    vocabulary from a text dataset); raises ``StagetrainError``."""
    fam = family(model.name)
    if inputs(ds) == "tokens" and not hasattr(fam, "resolve"):
        readers = " or ".join(f"model={n}" for n in offering("resolve"))
        raise StagetrainError(f"dataset={ds.name} gives token ids, which model={model.name} cannot read. Use a "
                              f"family whose stem embeds them: {readers}.")
    model = fam.resolve(model, ds) if hasattr(fam, "resolve") else model
    fam.validate(model, ds)
    batch_norm = hook(model, "batch_norm")
    if batch_size == 1 and batch_norm is not None and batch_norm(model):
        switch = hasattr(model, "bn")  # the families whose batch normalization is an option (model.bn)
        raise StagetrainError(
            f"train.batch_size=1 with model={model.name}{' model.bn=true' if switch else ''}: its batch normalization "
            "needs at least two samples per batch to compute its statistics. Use train.batch_size>=2"
            f"{' or model.bn=false' if switch else ''}.")
    return model


def hook(model: Any, name: str) -> Any:
    """The optional hook ``name`` of ``model``'s family (see the list above), or None."""
    return getattr(family(model.name), name, None)


def offering(name: str) -> list[str]:
    """The families that have the optional hook ``name`` (for a refusal naming the valid ones)."""
    return [n for n in FAMILIES if hasattr(family(n), name)]


def is_lm(model: Any) -> bool:
    """Whether ``model`` (a resolved model config) is a language model (its head predicts tokens)."""
    own = hook(model, "is_lm")
    return bool(own is not None and own(model))


def build_spec(model_cfg: object, in_shape: tuple[int, ...], num_classes: int) -> dict:
    """The architecture spec of ``model=<family>`` on inputs of ``in_shape``."""
    return family(model_cfg.name).spec(model_cfg, tuple(in_shape), int(num_classes))


def grow_widths(model: object) -> list[int]:
    fam = family(model.name)  # type: ignore[attr-defined]
    if not hasattr(fam, "grow_widths"):
        growable = offering("grow_widths")
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
