"""Building blocks of growth operators that any part type's widen/deepen can use: copying
units through a Net2Net mapping, splitting a consumer's columns between replicas, and the
optimizer-state map entries that say which parameters index the widened units."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from stagetrain.models.staged import StagedModel


def copy_units(dst: torch.Tensor, src: torch.Tensor, g: torch.Tensor, method: str, dim: int = 0) -> None:
    """A widened tensor's units along ``dim``: unit j copies old unit g(j) (net2net), or the
    old units are kept and new ones keep their fresh initialisation (random)."""
    if method == "random":
        dst.narrow(dim, 0, src.shape[dim]).copy_(src)
    else:
        dst.copy_(src.index_select(dim, g.to(src.device)))


def read_units(dst: torch.Tensor, src: torch.Tensor, g: torch.Tensor, method: str, dim: int = 1,
               spatial: int = 1) -> None:
    """A consumer's weight reading the widened units along ``dim``: net2net divides each
    replica's column by the replica count (the sum is unchanged); random keeps the old
    columns and leaves the new ones freshly initialised. ``spatial``: columns per unit
    (H*W at a conv -> flatten boundary)."""
    old, width = src.shape[dim] // spatial, dst.shape[dim] // spatial
    if spatial > 1:
        src = src.unflatten(dim, (old, spatial))
        dst = dst.unflatten(dim, (width, spatial))
    if method == "random":
        dst.narrow(dim, 0, old).copy_(src)
        return
    counts = torch.bincount(g, minlength=old).to(src)
    shape = [1] * src.dim()
    shape[dim] = -1
    dst.copy_(src.index_select(dim, g.to(src.device)) / counts[g.to(src.device)].view(shape))


def copy_norm(dst: nn.Module, src: nn.Module, g: torch.Tensor, method: str) -> None:
    """BatchNorm/LayerNorm parameters and running statistics through the unit mapping."""
    for attr in ("weight", "bias", "running_mean", "running_var"):
        if getattr(src, attr, None) is not None:
            copy_units(getattr(dst, attr), getattr(src, attr), g, method)
    if getattr(src, "num_batches_tracked", None) is not None:
        dst.num_batches_tracked.copy_(src.num_batches_tracked)


def own_units(param: str, dim: int = 0) -> dict[str, Any]:
    """Optimizer-state map entry: parameters (a name, or a prefix ending in '.') whose
    ``dim`` indexes the widened units; their moments are split between replicas."""
    return {"param": param, "dim": dim, "divide": True, "spatial": 1}


def consumer_units(param: str, dim: int = 1, spatial: int = 1) -> dict[str, Any]:
    """Map entry for parameters that read the widened units along ``dim`` (in groups of
    ``spatial`` columns at a flatten); their moments are copied unchanged."""
    return {"param": param, "dim": dim, "divide": False, "spatial": spatial}


def widen_info(g: torch.Tensor, method: str, own: list[dict[str, Any]], consumers: list[dict[str, Any]]
               ) -> dict[str, Any]:
    return {"op": "widen", "mapping": g, "method": method, "maps": own + consumers}


def fresh_name(blocks: list[Any]) -> str:
    """The first free ``block<i>`` name, i > the block count (blocks: typed parts, plain dicts or names)."""
    taken = {b if isinstance(b, str) else b["name"] if isinstance(b, dict) else b.name for b in blocks}
    i = len(blocks) + 1
    while f"block{i}" in taken:
        i += 1
    return f"block{i}"


def copy_parts(src: StagedModel, dst: StagedModel, skip: set[str]) -> None:
    """Copy every group (stem, blocks, head) but those in ``skip`` unchanged."""
    for name in src.group_names:
        if name not in skip:
            dst.group(name).load_state_dict(src.group(name).state_dict())


def insert_copy(model: StagedModel, index: int) -> tuple[StagedModel, nn.Module]:
    """A model with a block like block ``index`` (same spec, fresh weights) inserted above it,
    every other group copied unchanged; returns the model and the new block (whose weights an
    operator then sets, e.g. output projections zeroed for an identity)."""
    import copy
    from dataclasses import replace

    spec = copy.deepcopy(model.arch)
    blocks = spec.blocks
    new_block = copy.deepcopy(replace(blocks[index], name=fresh_name(blocks)))
    blocks.insert(index + 1, new_block)
    new = StagedModel(spec).to(next(model.parameters()))
    with torch.no_grad():
        copy_parts(model, new, {new_block.name})
    return new, new.blocks[new_block.name]
