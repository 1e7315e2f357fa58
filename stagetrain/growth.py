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

Each operator takes the model, returns a new model (the architecture spec changed
accordingly) and the unit mapping used (for mapping optimizer state).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from stagetrain.errors import StagetrainError
from stagetrain.models import StagedModel


def _consumer(spec: dict[str, Any], index: int) -> dict[str, Any]:
    blocks = spec["blocks"]
    return blocks[index + 1] if index + 1 < len(blocks) else spec["head"]


def widen(model: StagedModel, index: int, width: int, method: str = "net2net", noise: float = 0.0,
          generator: torch.Generator | None = None) -> tuple[StagedModel, torch.Tensor]:
    """Widen block ``index`` to ``width`` units/channels; returns (new model, mapping g)."""
    spec = copy.deepcopy(model.spec)
    block = spec["blocks"][index]
    old = block["out"]
    if width < old:
        raise StagetrainError(f"cannot shrink {block['name']} from {old} to {width} units: growth only widens.")
    if block.get("residual") or (spec["blocks"][index + 1:] or [{}])[0].get("residual"):
        raise StagetrainError(
            f"cannot widen {block['name']}: it is or feeds a residual block, whose input and output "
            "widths must stay equal. Widen before deepening with residual_zero, or use strategy.deepen=identity.")
    g = torch.cat([torch.arange(old), torch.randint(old, (width - old,), generator=generator)])
    counts = torch.bincount(g, minlength=old).to(torch.get_default_dtype())
    block["out"] = width
    block["out_shape"] = [width, *block["out_shape"][1:]]
    consumer = _consumer(spec, index)
    spatial = 1
    if consumer is spec["head"]:
        spatial = consumer["in"] // old  # H*W per channel at the conv -> flatten boundary
        consumer["in"] = width * spatial
    else:
        consumer["in"] = width
    new = StagedModel(spec).to(next(model.parameters()))
    name = block["name"]
    src, dst = model.blocks[name], new.blocks[name]
    consumer_name = spec["blocks"][index + 1]["name"] if index + 1 < len(spec["blocks"]) else "head"
    src_c, dst_c = model.group(consumer_name), new.group(consumer_name)
    with torch.no_grad():
        _copy_all_but(model, new, {name, consumer_name})
        if method == "random":
            dst.layer.weight[:old] = src.layer.weight
            dst.layer.bias[:old] = src.layer.bias
        else:
            dst.layer.weight.copy_(src.layer.weight[g])
            dst.layer.bias.copy_(src.layer.bias[g])
            if noise > 0 and width > old:
                scale = noise * src.layer.weight.std()
                extra = torch.randn(dst.layer.weight[old:].shape, generator=generator).to(dst.layer.weight)
                dst.layer.weight[old:] += scale * extra
        if src.bn is not None:
            for attr in ("weight", "bias", "running_mean", "running_var"):
                t = getattr(dst.bn, attr)
                if method == "random":
                    t[:old] = getattr(src.bn, attr)
                else:
                    t.copy_(getattr(src.bn, attr)[g])
            dst.bn.num_batches_tracked.copy_(src.bn.num_batches_tracked)
        # the consumer: its input dimension 1 changes
        w_src, w_dst = src_c.layer.weight, dst_c.layer.weight
        if spatial > 1:  # columns grouped per channel
            w_src = w_src.view(w_src.shape[0], old, spatial)
            w_dst = w_dst.view(w_dst.shape[0], width, spatial)
        if method == "random":
            w_dst[:, :old] = w_src
        else:
            w_dst.copy_(w_src[:, g] / counts[g].view(1, -1, *([1] * (w_src.dim() - 2))).to(w_src))
        dst_c.layer.bias.copy_(src_c.layer.bias)
        _copy_rest_of_consumer(src_c, dst_c)
    return new, g


def _copy_rest_of_consumer(src: nn.Module, dst: nn.Module) -> None:
    """Everything of the consumer block except its layer weight (BN, gate) is unchanged."""
    dst_state = dst.state_dict()
    for k, v in src.state_dict().items():
        if k not in ("layer.weight", "layer.bias") and dst_state[k].shape == v.shape:
            dst_state[k].copy_(v)


def _copy_all_but(src: StagedModel, dst: StagedModel, skip: set[str]) -> None:
    for name in [*src.block_names, "head"]:
        if name not in skip:
            dst.group(name).load_state_dict(src.group(name).state_dict())


def deepen(model: StagedModel, index: int, kind: str = "identity") -> StagedModel:
    """Insert a new block after block ``index``, of the same width (kind: identity,
    residual_zero, or random)."""
    spec = copy.deepcopy(model.spec)
    blocks = spec["blocks"]
    prev = blocks[index]
    act = prev["act"]
    if kind == "identity" and act != "relu":
        raise StagetrainError(
            f"An identity block is function-preserving only after ReLU blocks, but model.activation={act}. "
            "Use strategy.deepen=residual_zero (exact for any activation) or strategy.op=random.")
    width = prev["out"]
    new_block = {**prev, "name": _fresh_name(blocks), "in": width, "out": width, "pool": 0,
                 "dropout": 0.0, "residual": kind == "residual_zero"}
    blocks.insert(index + 1, new_block)
    new = StagedModel(spec).to(next(model.parameters()))
    with torch.no_grad():
        _copy_all_but(model, new, {new_block["name"]})
        b = new.blocks[new_block["name"]]
        if kind == "residual_zero":
            b.gate.zero_()
        elif kind == "identity":
            w = b.layer.weight
            w.zero_()
            if prev["type"] == "linear":
                w.copy_(torch.eye(width))
            else:
                k = prev["kernel"]
                w[torch.arange(width), torch.arange(width), k // 2, k // 2] = 1.0
            b.layer.bias.zero_()
            if b.bn is not None:
                b.bn.weight.fill_(1.0)
                b.bn.bias.zero_()
                b.bn.running_mean.zero_()
                b.bn.running_var.fill_(1.0 - b.bn.eps)  # (x - 0) / sqrt(var + eps) == x
    return new


def _fresh_name(blocks: list[dict[str, Any]]) -> str:
    taken = {b["name"] for b in blocks}
    i = len(blocks) + 1
    while f"block{i}" in taken:
        i += 1
    return f"block{i}"


def apply_op(model: StagedModel, op: dict[str, Any], generator: torch.Generator) -> tuple[StagedModel, dict[str, Any]]:
    """Apply one model op of a stage (widen, deepen, add_lora, merge_lora); returns the model
    and what optimizer-state mapping needs to know."""
    names = model.block_names
    if op["op"] == "widen":
        index = names.index(op["block"])
        new, g = widen(model, index, op["width"], op.get("method", "net2net"), op.get("noise", 0.0), generator)
        consumer = names[index + 1] if index + 1 < len(names) else "head"
        return new, {"op": "widen", "block": op["block"], "consumer": consumer, "mapping": g,
                     "method": op.get("method", "net2net"),
                     "spatial": new.spec["head"]["in"] // op["width"] if consumer == "head" else 1}
    if op["op"] == "deepen":
        index = names.index(op["after"])
        return deepen(model, index, op.get("kind", "identity")), {"op": "deepen"}
    if op["op"] in ("add_lora", "merge_lora"):
        from stagetrain.adapters import add_lora, merge_lora

        new = add_lora(model, op["rank"], op["alpha"]) if op["op"] == "add_lora" else merge_lora(model)
        return new, {"op": op["op"]}
    raise ValueError(f"unknown model op {op['op']!r}")


# ---------------------------------------------------------------- optimizer state across growth
FIRST_MOMENTS = ("exp_avg", "momentum_buffer")
SECOND_MOMENTS = ("exp_avg_sq", "max_exp_avg_sq")


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
    blocks start with fresh state; ``random`` growth gives new units zero moments.
    """
    state = {name: dict(entry) for name, entry in prev.items()}
    for info in mappings:
        if info["op"] != "widen":
            continue
        g, method = info["mapping"], info["method"]
        counts = torch.bincount(g)
        own = f"blocks.{info['block']}."
        consumer = "head.layer.weight" if info["consumer"] == "head" else f"blocks.{info['consumer']}.layer.weight"
        for name, entry in state.items():
            for key, value in entry.items():
                if not torch.is_tensor(value) or value.dim() == 0:
                    continue
                if name.startswith(own):
                    power = 1 if key in FIRST_MOMENTS else 2 if key in SECOND_MOMENTS else 0
                    entry[key] = _map_units(value, g, counts, power, method, dim=0)
                elif name == consumer:
                    entry[key] = _map_units(value, g, counts, 0, method, dim=1, spatial=info["spatial"])
    optimized = {id(q) for group in optimizer.param_groups for q in group["params"]}
    for name, p in model.named_parameters():
        entry = state.get(name)
        if entry is None or id(p) not in optimized:
            continue
        if all(not torch.is_tensor(v) or v.dim() == 0 or v.shape == p.shape for v in entry.values()):
            optimizer.state[p] = {k: v.to(p.device) if torch.is_tensor(v) else v for k, v in entry.items()}
