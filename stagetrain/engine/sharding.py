"""``device.shard=fsdp``: PyTorch FSDP2 (``fully_shard``) inside a stage, a plain model between stages.

Under torchrun a stage that trains with a first-order optimizer shards what it trains: each
trainable group (the stem, every trainable block, the head, the stage's helper) becomes one
``fully_shard`` unit (one all-gather before its forward, one reduce-scatter of its gradients;
its parameters, gradients and Adam moments live as dim-0 shards, 1/world per rank). Frozen
groups are not sharded (``ignored_params``): they have no gradients or optimizer state, and a
frozen prefix runs (and is cached) on every rank as in a DDP run, outside any FSDP forward.
The stage step (``runtime.StageStep``, what DDP would wrap) is the root unit; it holds what no
other unit does: a tied LM head and its embedding, which share a weight.

Between stages the model is plain: at a stage's end every rank gathers the full state
(``get_model_state_dict(..., full_state_dict=True)``) into a freshly built model, so growth,
the probe loss check and the optimizer-state mapping across growth work on whole tensors, as
without sharding; the mapped moments are then re-sharded (``to_shards``). The cost: the full
parameters (and, when the plan maps optimizer state, the full moments) exist on every rank
at each stage boundary, and the parameters at each evaluation (``gathered``: a plain copy
filled one parameter at a time, so the copy plus one whole parameter at most).

Precision: ``device.precision=bf16`` on CUDA is ``MixedPrecisionPolicy(param_dtype=bf16,
reduce_dtype=fp32)``: bf16 parameters in compute, fp32 gradient reduction, fp32 master
weights and optimizer state. On the CPU FSDP keeps fp32 parameters and reductions; bf16 there
is the engine's autocast of the forward, as without sharding.

An L-BFGS probe stage (full batch, one small group: a head) is not sharded; it runs as in a
DDP run. ``device.activation_checkpointing`` recomputes each trainable block's forward in the
backward pass (``torch.utils.checkpoint``, non-reentrant), with or without sharding.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from stagetrain.core.errors import StagetrainError
from stagetrain.core.plan import Stage
from stagetrain.engine.options import EngineOptions
from stagetrain.models import StagedModel
from stagetrain.nn.objectives import build_helper


def require_launched(opts: EngineOptions, world: int) -> None:
    """``device.shard=fsdp`` needs torchrun: refused with one paragraph in a single process."""
    if opts.shard == "fsdp" and world < 2:
        raise StagetrainError(
            "device.shard=fsdp shards the model across the processes of a torchrun launch, but this run is "
            "a single process. Start it with torchrun (torchrun --nproc-per-node 2 $(which stagetrain) ... "
            "device.shard=fsdp), or use device.shard=none (the default) for one process. A resumed run keeps the "
            "device.shard of its saved config: resume a device.shard=fsdp run under torchrun with 2 or more "
            "processes (any number: its sharded checkpoint is resharded).")


def wanted(opts: EngineOptions, stage: Stage, world: int, trainable: bool) -> bool:
    """Whether this stage runs sharded: fsdp asked, several ranks, something trains, not L-BFGS."""
    return opts.shard == "fsdp" and world > 1 and trainable and stage.optimizer != "lbfgs"


def set_activation_checkpointing(model: StagedModel, on: bool) -> None:
    """Recompute each trainable block's forward in backward (``on``), or undo it."""
    for block in model.blocks.values():
        patched = "forward" in block.__dict__
        if on and not patched and any(p.requires_grad for p in block.parameters()):
            block.forward = functools.partial(_recomputed, block)
        elif not on and patched:
            del block.forward


def _recomputed(block: nn.Module, *args: Any, **kwargs: Any) -> Any:
    return checkpoint(type(block).forward, block, *args, use_reentrant=False, **kwargs)


def _units(step: nn.Module) -> tuple[list[nn.Module], set[nn.Parameter]]:
    """The modules sharded as units of their own (trainable groups, the helper) and the
    parameters left plain (frozen groups). A tied stem and LM head share a weight: they are no
    units of their own but stay in the root unit (the stage step)."""
    model: StagedModel = step.model
    groups = [model.group(n) for n in model.group_names]
    trains = [g for g in groups if any(p.requires_grad for p in g.parameters())]
    frozen = {p for g in groups if g not in trains for p in g.parameters()}
    if getattr(model.head, "_tied", None) and model.has_stem:
        trains = [g for g in trains if g is not model.head and g is not model.stem]
    if step.helper is not None and any(p.requires_grad for p in step.helper.parameters()):
        trains.append(step.helper)
    return trains, frozen


def shard(step: nn.Module, device: torch.device, bf16: bool) -> None:
    """``fully_shard`` each unit, then the stage step as the root (in place: the parameters
    become DTensor shards; frozen groups' parameters are ignored, so they stay plain)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    policy = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
              if bf16 and device.type == "cuda" else MixedPrecisionPolicy())
    units, frozen = _units(step)
    for unit in units:
        fully_shard(unit, mp_policy=policy)
    fully_shard(step, mp_policy=policy, ignored_params=frozen)


def to_shards(optimizer: torch.optim.Optimizer) -> None:
    """Optimizer state given as whole tensors (mapped across growth, or an unsharded checkpoint's)
    becomes the shard of each DTensor parameter, as FSDP's own state is."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    for group in optimizer.param_groups:
        for p in group["params"]:
            entry = optimizer.state.get(p)
            if not entry or not isinstance(p, DTensor):
                continue
            for key, v in entry.items():
                if torch.is_tensor(v) and not isinstance(v, DTensor) and v.dim() > 0 and v.shape == p.shape:
                    entry[key] = distribute_tensor(v.to(p.device_mesh.device_type), p.device_mesh, p.placements)


def broadcast_buffers(model: nn.Module) -> None:
    """Rank 0's buffers (BatchNorm statistics) on every rank: what DDP's forward does each step."""
    import torch.distributed as dist

    for b in model.buffers():
        dist.broadcast(b.data, src=0)


def gathered(step: nn.Module, stage: Stage, device: torch.device) -> tuple[StagedModel, nn.Module | None]:
    """A plain copy of the sharded stage's model and helper, on every rank: built without drawing
    from the global RNG (a run's random stream is not shifted), then filled one parameter at a
    time (``DTensor.full_tensor``: the fp32 shards, never a mixed-precision cast), so a rank holds
    the copy plus one whole parameter at most; buffers are rank 0's."""
    from torch.distributed.tensor import DTensor

    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        model = StagedModel(step.model.spec).to(device)
        helper = build_helper(stage.helper) if step.helper is not None else None
    if helper is not None:
        helper.to(device)
    targets = dict(model.named_parameters(prefix="model"))
    buffers = dict(model.named_buffers(prefix="model"))
    if helper is not None:
        targets.update(helper.named_parameters(prefix="helper"))
        buffers.update(helper.named_buffers(prefix="helper"))
    broadcast_buffers(step)
    with torch.no_grad():
        for name, p in step.named_parameters():
            targets[name].copy_(p.full_tensor() if isinstance(p, DTensor) else p)
        for name, b in step.named_buffers():
            buffers[name].copy_(b)
    return model, helper


def full_optimizer_state(step: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer's per-parameter state of the model's parameters, keyed by parameter name,
    as whole tensors (the form ``growth.map_optimizer_state`` reads)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    osd = get_optimizer_state_dict(step, optimizer, options=StateDictOptions(full_state_dict=True))
    return {k[len("model."):]: dict(v) for k, v in osd["state"].items() if k.startswith("model.") and v}
