"""Applying a stage's model ops with the operators each block's registered type provides,
and the model-level ops: depth stacking, LoRA adapters added (function unchanged) and merged."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch

from stagetrain.core.errors import StagetrainError
from stagetrain.core.spec import Lora, ModelSpec, as_spec
from stagetrain.models import StagedModel, part_type
from stagetrain.models.growth_units import fresh_name
from stagetrain.models.lora import LORA_TYPES, adaptable, resolve_targets
from stagetrain.nn.modelops import AddLora, Deepen, MergeLora, ModelOp, Stack, Widen, as_op


def _grown_block(model: StagedModel, op: Widen | Deepen, name: str, variant: str) -> tuple[int, Any]:
    """The index of the block ``op`` grows and its type's operator for it, or one paragraph
    when the block's type does not offer ``<op>:<variant>``."""
    index = model.block_names.index(name)
    t = part_type(model.arch.blocks[index].TAG)
    fn = t.widen if isinstance(op, Widen) else t.deepen
    if fn is None or f"{op.op}:{variant}" not in t.grow:
        raise StagetrainError(f"Blocks of type {t.name!r} ({name}) do not support {op.op}:{variant}; "
                              f"their growth operators: {', '.join(t.grow) or 'none'}.")
    return index, fn


def _widen(model: StagedModel, op: Widen, generator: torch.Generator) -> tuple[StagedModel, dict[str, Any]]:
    index, fn = _grown_block(model, op, op.block, op.method)
    return fn(model, index, op.width, op.method, op.noise, generator)


def _deepen(model: StagedModel, op: Deepen, generator: torch.Generator) -> tuple[StagedModel, dict[str, Any]]:
    index, fn = _grown_block(model, op, op.after, op.kind)
    return fn(model, index, op.kind), {"op": "deepen"}


def _stack(model: StagedModel, op: Stack, generator: torch.Generator) -> tuple[StagedModel, dict[str, Any]]:
    old = list(model.block_names)
    model = stack(model)
    return model, {"op": "stack", "copies": dict(zip(model.block_names[len(old):], old, strict=True))}


def _add_lora(model: StagedModel, op: AddLora, generator: torch.Generator) -> tuple[StagedModel, dict[str, Any]]:
    return add_lora(model, op.rank, op.alpha, list(op.targets) if op.targets is not None else None), {"op": "add_lora"}


def _merge_lora(model: StagedModel, op: MergeLora, generator: torch.Generator) -> tuple[StagedModel, dict[str, Any]]:
    return merge_lora(model), {"op": "merge_lora"}


APPLY: dict[type[ModelOp], Callable[..., tuple[StagedModel, dict[str, Any]]]] = {
    Widen: _widen, Deepen: _deepen, Stack: _stack, AddLora: _add_lora, MergeLora: _merge_lora}


def apply_op(model: StagedModel, op: ModelOp | dict[str, Any],
             generator: torch.Generator) -> tuple[StagedModel, dict[str, Any]]:
    """Apply one model op of a stage (``modelops``: Widen, Deepen, Stack, AddLora,
    MergeLora; its plain dict is read too) with the operator the block's registered type
    provides; returns the model and what optimizer-state mapping needs to know."""
    op = as_op(op)
    return APPLY[type(op)](model, op, generator)


def stack_problem(spec: ModelSpec | dict[str, Any]) -> str | None:
    """Why depth stacking cannot apply to this architecture (None when it can)."""
    arch = as_spec(spec)
    blocks = arch.blocks
    first_in = arch.stem.out_shape if arch.stem is not None else arch.in_shape
    ins = [list(first_in)] + [list(b.out_shape) for b in blocks[:-1]]
    changing = [b.name for b, i in zip(blocks, ins, strict=True) if list(b.out_shape) != i]
    if not changing:
        return None
    return ("Depth stacking (strategy.deepen=stack) copies the block stack on top of itself, which needs every "
            f"block to keep its input shape; {', '.join(changing)} change it (e.g. the first block of an MLP maps "
            "the input to its width). Use strategy.deepen=identity or residual_zero for this model.")


def stack(model: StagedModel) -> StagedModel:
    """Depth stacking (G_stack, Du et al. 2024): the trained blocks, then copies of them in
    the same order. Not function-preserving; every block must keep its input shape."""
    spec = copy.deepcopy(model.arch)
    blocks = spec.blocks
    problem = stack_problem(spec)
    if problem:
        raise StagetrainError(problem)
    copies: list[Any] = []
    for b in blocks:
        copies.append(copy.deepcopy(replace(b, name=fresh_name(blocks + copies))))
    spec.blocks = blocks + copies
    new = StagedModel(spec).to(next(model.parameters()))
    state = model.state_dict()
    for b, c in zip(blocks, copies, strict=True):
        for k, v in model.blocks[b.name].state_dict().items():
            state[f"blocks.{c.name}.{k}"] = v
    new.load_state_dict(state)
    return new


def add_lora(model: Any, rank: int, alpha: float, patterns: list[str] | None = None) -> Any:
    """The same model with adapters on the selected layers (output unchanged)."""
    targets = resolve_targets(model, list(patterns or []))
    if not targets:
        names = sorted({f"{n} ({type(m).__name__})" for b in model.blocks.values()
                        for n, m in b.named_modules() if adaptable(m)})
        why = (f"strategy.lora.targets={list(patterns)} matches none of the blocks' Linear/Conv2d layers"
               if patterns else "strategy.lora.targets=[] adapts every nn.Linear inside the blocks, and they have none")
        example = names[0].split(" ")[0] if names else None
        raise StagetrainError(
            f"{why}. Layers the blocks have: {', '.join(names[:12]) or 'none'}. "
            + (f"Name them by pattern, e.g. strategy.lora.targets=[{example}]." if example
               else "LoRA needs Linear or Conv2d layers inside the blocks; use mode=bitfit or partial."))
    spec = replace(model.arch, lora=Lora(rank=int(rank), alpha=float(alpha), targets=targets))
    new = StagedModel(spec).to(next(model.parameters()))
    missing, unexpected = new.load_state_dict(model.state_dict(), strict=False)
    assert not unexpected and all("lora_" in k for k in missing)
    return new


def merge_lora(model: Any) -> Any:
    """Fold W + alpha/r * B A into plain layers; the function is unchanged."""
    spec = replace(model.arch, lora=None, keys=tuple(k for k in model.arch.to_dict() if k != "lora"))
    new = StagedModel(spec).to(next(model.parameters()))
    state = {k: v for k, v in model.state_dict().items() if "lora_" not in k}
    with torch.no_grad():
        for name, m in model.named_modules():
            if isinstance(m, LORA_TYPES):
                state[f"{name}.weight"] = m.weight + m.delta()
    new.load_state_dict(state)
    return new
