"""Optimizer state across growth: carry Adam/SGD moments through a widening's unit map, and
copy them to the layers depth stacking copies."""

from __future__ import annotations

from typing import Any

import torch

from stagetrain.models import StagedModel

FIRST_MOMENTS = ("exp_avg", "momentum_buffer")
SECOND_MOMENTS = ("exp_avg_sq", "max_exp_avg_sq")
MOMENT_KEYS = {"step", *FIRST_MOMENTS, *SECOND_MOMENTS}  # the state a first-order optimizer carries over


def optimizer_state_by_name(optimizer: torch.optim.Optimizer, model: StagedModel) -> dict[str, Any]:
    """The optimizer's per-parameter state keyed by parameter name (survives rebuilding)."""
    out = {}
    for name, p in model.named_parameters():
        if p in optimizer.state and optimizer.state[p]:
            out[name] = {k: v.detach().clone() if torch.is_tensor(v) else v for k, v in optimizer.state[p].items()}
    return out


def _map_units(t: torch.Tensor, g: torch.Tensor, counts: torch.Tensor, power: int, method: str,
               dim: int, spatial: int = 1) -> torch.Tensor:
    """Map a state tensor along ``dim`` (the unit axis) through g, dividing by counts**power."""
    if spatial > 1:  # flatten boundary: columns grouped per channel
        shape = t.shape
        t = t.reshape(shape[0], -1, spatial)
    if method == "random":
        new_shape = list(t.shape)
        new_shape[dim] = len(g)
        out = torch.zeros(new_shape, dtype=t.dtype, device=t.device)
        out.narrow(dim, 0, t.shape[dim]).copy_(t)
    else:
        out = t.index_select(dim, g.to(t.device))
        if power:
            scale = counts[g].to(t) ** power
            out = out / scale.view(*([1] * dim), -1, *([1] * (t.dim() - dim - 1)))
    return out.reshape(out.shape[0], -1) if spatial > 1 else out


def map_optimizer_state(optimizer: torch.optim.Optimizer, model: StagedModel, prev: dict[str, Any],
                        mappings: list[dict[str, Any]]) -> None:
    """Carry the previous stage's moments into the grown model's optimizer.

    A widened block's own parameters (incoming rows, bias, BN, gate) copy the moments of
    the unit they replicate, first moments divided by the replica count and second moments
    by its square (each copy's gradient is 1/count of the original's); the consumer's
    incoming columns copy theirs unchanged (their gradient equals the original's). New
    blocks start with fresh state; ``random`` growth gives new units zero moments. Depth
    stacking's copies start with the moments (and step count) of the block each copies.
    """
    state = {name: dict(entry) for name, entry in prev.items()}
    for info in mappings:
        if info["op"] == "stack":
            _copy_stacked(state, info["copies"])
        if info["op"] != "widen":
            continue
        g, method = info["mapping"], info["method"]
        counts = torch.bincount(g)
        for name, entry in state.items():
            rules = [m for m in info["maps"] if name == m["param"]
                     or (m["param"].endswith(".") and name.startswith(m["param"]))]
            for rule in rules:  # a tensor may index the widened units along two dims (e.g. a conv inside a stage)
                for key, value in entry.items():
                    if not torch.is_tensor(value) or value.dim() <= rule["dim"]:
                        continue
                    power = (1 if key in FIRST_MOMENTS else 2 if key in SECOND_MOMENTS else 0) if rule["divide"] else 0
                    entry[key] = _map_units(value, g, counts, power, method, rule["dim"], rule["spatial"])
    optimized = {id(q) for group in optimizer.param_groups for q in group["params"]}
    for name, p in model.named_parameters():
        entry = state.get(name)
        if entry is None or id(p) not in optimized:
            continue
        if set(entry) <= MOMENT_KEYS and all(not torch.is_tensor(v) or v.dim() == 0 or v.shape == p.shape
                                             for v in entry.values()):  # not L-BFGS's history
            optimizer.state[p] = {k: v.to(p.device) if torch.is_tensor(v) else v for k, v in entry.items()}


def _copy_stacked(state: dict[str, Any], copies: dict[str, str]) -> None:
    """``copies``: new block name -> the block it copies; its parameters get that block's state."""
    for new, old in copies.items():
        prefix = f"blocks.{old}."
        for name, entry in list(state.items()):
            if name.startswith(prefix):
                state[f"blocks.{new}.{name[len(prefix):]}"] = {
                    k: v.clone() if torch.is_tensor(v) else v for k, v in entry.items()}
