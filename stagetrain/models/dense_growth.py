"""Growth operators: widen a block, insert a block; function-preserving by default (Net2Net).

* ``widen`` (net2net): unit j of the widened block copies old unit g(j) (g(j) = j for old
  units, a seeded random old unit for new ones): incoming weights, bias and BatchNorm
  parameters/statistics are copied through g; the consumer's incoming weights from each
  copy are divided by the number of replicas of that old unit, so the sum is unchanged.
  For a conv block feeding the flatten + linear head the division is applied per channel
  block of H*W columns. Optional ``noise`` perturbs the new copies (seeded).
* ``widen`` (random): new units and their outgoing weights are freshly initialised.
* ``deepen`` (identity): a block equal to the identity (Linear = I, conv = centred delta
  kernel, BN = identity). Exact only when the input is non-negative and the activation is
  ReLU, i.e. after a ReLU block; tanh/sigmoid/... are refused.
* ``deepen`` (residual_zero): y = x + gate * act(BN(W x + b)) with gate = 0: exact for any
  activation; W is freshly initialised so the gate receives gradients.
* ``deepen`` (random): a freshly initialised block (not function-preserving).

Each operator takes the model, returns a new model (its typed spec, ``model.arch``, changed
accordingly: fields set on a copy, ``dataclasses.replace`` for a new block) and the unit
mapping used (for mapping optimizer state).
"""

from __future__ import annotations

import copy
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from stagetrain.core.errors import StagetrainError
from stagetrain.core.partbase import Part
from stagetrain.core.parts import Conv, Dense
from stagetrain.core.spec import ModelSpec
from stagetrain.models.growth_units import (
    consumer_units,
    copy_norm,
    copy_parts,
    copy_units,
    fresh_name,
    own_units,
    read_units,
    widen_info,
)
from stagetrain.models.staged import StagedModel


def _consumer(spec: ModelSpec, index: int) -> Part:
    blocks = spec.blocks
    return blocks[index + 1] if index + 1 < len(blocks) else spec.head


def widen_dense(model: StagedModel, index: int, width: int, method: str = "net2net", noise: float = 0.0,
                generator: torch.Generator | None = None) -> tuple[StagedModel, dict[str, Any]]:
    """Widen linear/conv block ``index`` to ``width`` units/channels; returns the new model
    and the optimizer-state mapping (see ``map_optimizer_state``)."""
    spec = copy.deepcopy(model.arch)
    block = spec.blocks[index]
    assert isinstance(block, Dense)
    old = block.out
    if width < old:
        raise StagetrainError(f"cannot shrink {block.name} from {old} to {width} units: growth only widens.")
    after = spec.blocks[index + 1] if index + 1 < len(spec.blocks) else None
    if block.residual or getattr(after, "residual", None):
        raise StagetrainError(
            f"cannot widen {block.name}: it is or feeds a residual block, whose input and output "
            "widths must stay equal. Widen before deepening with residual_zero, or use strategy.deepen=identity.")
    g = torch.cat([torch.arange(old), torch.randint(old, (width - old,), generator=generator)])
    block.out = width
    block.out_shape = [width, *block.out_shape[1:]]
    consumer = _consumer(spec, index)
    if consumer.TAG not in ("linear", "conv", "linear_head"):
        raise StagetrainError(f"cannot widen {block.name}: the block after it is of type {consumer.TAG!r}, "
                              "which a linear/conv widening cannot adapt.")
    spatial = 1
    if not isinstance(consumer, Conv) and isinstance(block, Conv):
        spatial = consumer.inp // old  # H*W per channel at the conv -> flatten boundary
    consumer.inp = width * spatial
    new = StagedModel(spec).to(next(model.parameters()))
    name = block.name
    src, dst = model.blocks[name], new.blocks[name]
    consumer_name = after.name if after is not None else "head"
    src_c, dst_c = model.group(consumer_name), new.group(consumer_name)
    with torch.no_grad():
        copy_parts(model, new, {name, consumer_name})
        copy_units(dst.layer.weight, src.layer.weight, g, method)
        copy_units(dst.layer.bias, src.layer.bias, g, method)
        if method != "random" and noise > 0 and width > old:
            scale = noise * src.layer.weight.std()
            extra = torch.randn(dst.layer.weight[old:].shape, generator=generator).to(dst.layer.weight)
            dst.layer.weight[old:] += scale * extra
        if src.bn is not None:
            copy_norm(dst.bn, src.bn, g, method)
        read_units(dst_c.layer.weight, src_c.layer.weight, g, method, dim=1, spatial=spatial)
        dst_c.layer.bias.copy_(src_c.layer.bias)
        _copy_rest_of_consumer(src_c, dst_c)
    prefix = "head." if consumer_name == "head" else f"blocks.{consumer_name}."
    return new, widen_info(g, method, [own_units(f"blocks.{name}.")],
                           [consumer_units(prefix + "layer.weight", spatial=spatial)])


def _copy_rest_of_consumer(src: nn.Module, dst: nn.Module) -> None:
    """Everything of the consumer block except its layer weight (BN, gate) is unchanged."""
    dst_state = dst.state_dict()
    for k, v in src.state_dict().items():
        if k not in ("layer.weight", "layer.bias") and dst_state[k].shape == v.shape:
            dst_state[k].copy_(v)


def deepen_dense(model: StagedModel, index: int, kind: str = "identity") -> StagedModel:
    """Insert a new block after block ``index``, of the same width (kind: identity,
    residual_zero, or random)."""
    spec = copy.deepcopy(model.arch)
    blocks = spec.blocks
    prev = blocks[index]
    assert isinstance(prev, Dense)
    act = prev.act
    if kind == "identity" and act != "relu":
        raise StagetrainError(
            f"An identity block is function-preserving only after ReLU blocks, but model.activation={act}. "
            "Use strategy.deepen=residual_zero (exact for any activation) or strategy.op=random.")
    width = prev.out
    new_block = copy.deepcopy(replace(prev, name=fresh_name(blocks), inp=width, out=width, pool=0, dropout=0.0,
                                      residual=kind == "residual_zero"))
    blocks.insert(index + 1, new_block)
    new = StagedModel(spec).to(next(model.parameters()))
    with torch.no_grad():
        copy_parts(model, new, {new_block.name})
        b = new.blocks[new_block.name]
        if kind == "residual_zero":
            b.gate.zero_()
        elif kind == "identity":
            w = b.layer.weight
            w.zero_()
            if not isinstance(prev, Conv):
                w.copy_(torch.eye(width))
            else:
                k = prev.kernel
                w[torch.arange(width), torch.arange(width), k // 2, k // 2] = 1.0
            b.layer.bias.zero_()
            if b.bn is not None:
                b.bn.weight.fill_(1.0)
                b.bn.bias.zero_()
                b.bn.running_mean.zero_()
                b.bn.running_var.fill_(1.0 - b.bn.eps)  # (x - 0) / sqrt(var + eps) == x
    return new


