"""Growth operators of ``resnet_stage`` blocks.

**widen** (net2net): stage i's channels grow from C to C' through one Net2Net map g
(g(j) = j for old channels, a seeded random old channel for new ones). The residual sum
ties every unit of a stage to the same channels, so all units share g: each tensor axis
that indexes the stage's channels is mapped -- an output axis (conv rows, BN scale, shift
and running statistics) copies channel g(j); an input axis (conv columns) copies column
g(j) divided by the number of replicas of that channel, so the sum is unchanged. A basic
unit's inner width equals its out width and is mapped with the same g; a bottleneck's
inner (mid) width keeps its size. The consumer -- the next stage's first unit (its first
conv and shortcut) or the head's Linear columns (after global pooling there is no
spatial split) -- reads the replicas. An identity shortcut whose channels change becomes
a projection that starts as the exact channel copy (1x1 conv of ones on g, BN the
identity on its running statistics): exact in eval mode; in train mode that one BN
normalises by batch statistics. **widen** (random): new channels and their outgoing
weights keep their fresh initialisation.

**deepen** (residual_zero / identity): a new block after stage i, a stride-1 stage of one
unit with stage i's channels and an identity shortcut, whose last BN scale is zero: the
unit computes relu(x + 0) = x on stage i's non-negative (post-ReLU) output, exactly, in
train and eval mode. It is a new block rather than one more unit inside stage i so that
it is its own trainable group (grow's longer width lists, finetune's add_layers); the
computation is the same as an extra unit at the end of stage i. **deepen** (random): the
same block freshly initialised.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from stagetrain.core.errors import StagetrainError
from stagetrain.core.parts import ResnetStage
from stagetrain.models.growth_units import (
    consumer_units,
    copy_parts,
    fresh_name,
    own_units,
    widen_info,
)
from stagetrain.models.resnet_spec import stage_spec
from stagetrain.models.staged import StagedModel

# Which channels each dim of a unit's tensors indexes: "in" (the unit's input), "mid", "out".
AXES = {
    "basic": {"conv1": ("mid", "in"), "bn1": ("mid",), "conv2": ("out", "mid"), "bn2": ("out",),
              "shortcut.conv": ("out", "in"), "shortcut.bn": ("out",)},
    "bottleneck": {"conv1": ("mid", "in"), "bn1": ("mid",), "conv2": ("mid", "mid"), "bn2": ("mid",),
                   "conv3": ("out", "mid"), "bn3": ("out",), "shortcut.conv": ("out", "in"),
                   "shortcut.bn": ("out",)},
}


def _widened_dims(stage: ResnetStage, unit: int, module: str, widened: set[str]) -> list[int]:
    """Dims of ``module``'s tensors that index widened channels (units after the first read
    the stage's own channels as their input)."""
    axes = AXES[stage.unit][module]
    if unit > 0:
        axes = tuple("out" if a == "in" else a for a in axes)
    return [d for d, a in enumerate(axes) if a in widened]


def _identity_shortcut(state: dict[str, torch.Tensor], prefix: str, channels: int, like: torch.Tensor) -> None:
    """The source tensors of an identity shortcut written as the equivalent projection."""
    eps = nn.BatchNorm2d(1).eps
    eye = torch.eye(channels, dtype=like.dtype, device=like.device)
    state[prefix + "conv.weight"] = eye[:, :, None, None]
    state[prefix + "bn.weight"] = torch.ones_like(eye[0])
    state[prefix + "bn.bias"] = torch.zeros_like(eye[0])
    state[prefix + "bn.running_mean"] = torch.zeros_like(eye[0])
    state[prefix + "bn.running_var"] = torch.full_like(eye[0], 1.0 - eps)  # (x - 0) / sqrt(var + eps) == x
    state[prefix + "bn.num_batches_tracked"] = torch.zeros((), dtype=torch.long, device=like.device)


def _remap(dst: torch.Tensor, src: torch.Tensor, dims: list[int], g: torch.Tensor, method: str) -> None:
    """dst from src along the widened ``dims``: dim 0 copies unit g(j), dim 1 (a conv's
    input) copies column g(j) / replicas; random keeps dst's fresh values for new units."""
    if method == "random":
        dst[tuple(slice(0, src.shape[d]) for d in range(src.dim()))] = src
        return
    g = g.to(src.device)
    counts = torch.bincount(g).to(src)
    for d in dims:
        src = src.index_select(d, g)
        if d == 1:
            src = src / counts[g].view(1, -1, *([1] * (src.dim() - 2)))
    dst.copy_(src)


def _map_block(src_block: nn.Module, dst_block: nn.Module, stage_old: ResnetStage, widened: set[str],
               g: torch.Tensor, method: str, prefix: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Write dst_block's tensors from src_block's through g; returns the optimizer-state
    map entries (own: output axes, consumer: input axes) of its parameters."""
    src_state = dict(src_block.state_dict())
    if stage_old.shortcut == "identity":
        _identity_shortcut(src_state, "units.0.shortcut.", stage_old.inp, src_state["units.0.conv1.weight"])
    params = {name for name, _ in dst_block.named_parameters()}
    own, reads = [], []
    for key, dst in dst_block.state_dict().items():
        _, unit, rest = key.split(".", 2)
        module, attr = rest.rsplit(".", 1)
        dims = [] if attr == "num_batches_tracked" else _widened_dims(stage_old, int(unit), module, widened)
        _remap(dst, src_state[key], dims, g, method)
        if key in params:
            own += [own_units(prefix + key, 0) for d in dims if d == 0]
            reads += [consumer_units(prefix + key, 1) for d in dims if d == 1]
    return own, reads


def _add_noise(block: nn.Module, own: list[dict[str, Any]], prefix: str, old: int, noise: float,
               generator: torch.Generator) -> None:
    """Perturb the new replicas' conv rows (``noise`` x the weight's std), seeded."""
    params = dict(block.named_parameters())
    for entry in own:
        p = params[entry["param"].removeprefix(prefix)]
        if noise > 0 and p.dim() == 4 and p.shape[0] > old:
            p[old:] += noise * p[:old].std() * torch.randn(p[old:].shape, generator=generator).to(p)


def widen_stage(model: StagedModel, index: int, width: int, method: str = "net2net", noise: float = 0.0,
                generator: torch.Generator | None = None) -> tuple[StagedModel, dict[str, Any]]:
    """Widen resnet stage ``index`` to ``width`` channels; returns the new model and the
    optimizer-state map (``widen_info``)."""
    spec = copy.deepcopy(model.arch)
    stage = spec.blocks[index]
    assert isinstance(stage, ResnetStage)
    old_stage = copy.deepcopy(stage)
    old, name = stage.out, stage.name
    if width < old:
        raise StagetrainError(f"cannot shrink {name} from {old} to {width} channels: growth only widens.")
    if spec.lora is not None:
        raise StagetrainError(f"cannot widen {name} while it carries LoRA adapters: merge them first.")
    g = torch.cat([torch.arange(old), torch.randint(old, (width - old,), generator=generator)])
    basic = stage.unit == "basic"
    stage.out, stage.out_shape, stage.mid = width, [width, *stage.out_shape[1:]], width if basic else stage.mid
    if width != old:
        stage.shortcut = "projection"
    last = index + 1 == len(spec.blocks)
    consumer = spec.head if last else spec.blocks[index + 1]
    if consumer.TAG not in ("pool_linear", "resnet_stage"):
        raise StagetrainError(f"cannot widen {name}: the part after it is of type {consumer.TAG!r}, which "
                              "a resnet stage widening cannot adapt (it adapts resnet stages and the pool_linear head).")
    old_consumer = copy.deepcopy(consumer)
    consumer.inp = width
    if not last and width != old:
        consumer.shortcut = "projection"
    new = StagedModel(spec).to(next(model.parameters()))
    consumer_name = "head" if last else consumer.name
    with torch.no_grad():
        copy_parts(model, new, {name, consumer_name})
        widened = {"out", "mid"} if basic else {"out"}
        own, reads = _map_block(model.blocks[name], new.blocks[name], old_stage, widened, g, method, f"blocks.{name}.")
        if method != "random":
            _add_noise(new.blocks[name], own, f"blocks.{name}.", old, noise, generator)
        if last:
            _remap(new.head.layer.weight, model.head.layer.weight, [1], g, method)
            new.head.layer.bias.copy_(model.head.layer.bias)
            reads.append(consumer_units("head.layer.weight", 1))
        else:
            _, more = _map_block(model.blocks[consumer_name], new.blocks[consumer_name], old_consumer, {"in"}, g,
                                 method, f"blocks.{consumer_name}.")
            reads += more
    return new, widen_info(g, method, own, reads)


def deepen_stage(model: StagedModel, index: int, kind: str = "residual_zero") -> StagedModel:
    """Insert a stride-1, one-unit stage with stage ``index``'s channels after it:
    zero last-BN scale (residual_zero, identity: exact) or fresh (random)."""
    spec = copy.deepcopy(model.arch)
    blocks = spec.blocks
    prev = blocks[index]
    assert isinstance(prev, ResnetStage)
    c = prev.out
    block = stage_spec(fresh_name(blocks), prev.unit, c, c, 1, 1, prev.out_shape[1:])
    blocks.insert(index + 1, block)
    new = StagedModel(spec).to(next(model.parameters()))
    with torch.no_grad():
        copy_parts(model, new, {block.name})
        if kind in ("residual_zero", "identity"):
            for unit in new.blocks[block.name].units:
                unit.last_bn.weight.zero_()
    return new
