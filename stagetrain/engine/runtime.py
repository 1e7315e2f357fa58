"""Entering a stage: what trains, in which mode, with which optimizer, schedule and cache.

``enter_stage`` returns a small ``StageRuntime`` that the loop uses until the stage ends.
``prepare`` is its model-only part (helper, freezing, FLOPs per sample), which the dry
run shares, so a dry-run estimate is computed exactly as the run will count.
"""

from __future__ import annotations

import copy
import fnmatch
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from stagetrain.checkpoint import set_rng_state
from stagetrain.core.plan import Plan, Stage
from stagetrain.data import DataBundle
from stagetrain.data.stream import EpochLoader
from stagetrain.engine import sharding
from stagetrain.engine.options import EngineOptions
from stagetrain.growth import map_optimizer_state
from stagetrain.models import StagedModel
from stagetrain.nn.flops import PROBE_BATCH, measure_stage_flops
from stagetrain.nn.objectives import build_helper, stage_loss
from stagetrain.nn.optim import build_optimizer, build_scheduler, param_groups


def prefix_len(model: StagedModel, stage: Stage) -> int:
    """Number of leading blocks of the stage's path that are frozen: their output is the
    stage's input, computed without gradients (and cached when that pays)."""
    if stage.extra.bn != "eval" or "stem" in stage.trainable:  # a changing function below block 1 is no prefix
        return 0
    stop = len(model.block_names) if stage.stop_block is None else stage.stop_block
    p = 0
    while p < stop and model.block_names[p] not in stage.trainable:
        p += 1
    return p


def freeze(model: StagedModel, stage: Stage) -> None:
    """requires_grad True exactly for what the stage trains.

    A trainable group trains whole unless ``stage.extra.partial`` names the parameter-name
    patterns (fnmatch, within the group) that train in it (BitFit: ``*bias``; LoRA: ``*lora_*``). ``stage.extra.bn=train_affine``
    also trains the BatchNorm scale and shift of frozen groups.
    """
    for p in model.parameters():  # no stale gradient from the previous stage stays behind
        p.grad = None
    for name in model.group_names:
        group = model.group(name)
        if name in stage.trainable and name in stage.extra.partial:
            for pname, p in group.named_parameters():
                p.requires_grad_(any(fnmatch.fnmatchcase(pname, pat) for pat in stage.extra.partial[name]))
        else:
            group.requires_grad_(name in stage.trainable)
            if name not in stage.trainable and stage.extra.bn == "train_affine":
                for m in group.modules():
                    if isinstance(m, nn.modules.batchnorm._BatchNorm):
                        m.requires_grad_(True)


def set_train_mode(model: StagedModel, helper: nn.Module | None, stage: Stage) -> None:
    """Train mode for what trains; frozen groups stay in eval (BN stats, dropout frozen)."""
    model.train()
    for name in model.group_names:
        if name not in stage.trainable:
            model.group(name).eval()
            if stage.extra.bn != "eval":  # train_stats / train_affine: frozen BN keeps updating statistics
                for m in model.group(name).modules():
                    if isinstance(m, nn.modules.batchnorm._BatchNorm):
                        m.train()
    if helper is not None:
        helper.train()


class StageStep(nn.Module):
    """A stage's training forward as one module: the loss of a batch that enters block ``prefix``.

    It is what DDP wraps (so a stage's helper -- auxiliary head, decoder, visible bias --
    has its gradients averaged with the blocks it trains) and what ``device.compile``
    compiles; a new one is built at every stage entry.
    """

    def __init__(self, stage: Stage, model: StagedModel, helper: nn.Module | None, prefix: int):
        super().__init__()
        self.stage, self.model, self.helper, self.prefix = stage, model, helper, prefix

    def forward(self, h: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        return stage_loss(self.stage, self.model, self.helper, h, y, self.prefix, True)


@dataclass
class StageRuntime:
    """What the loop needs while a stage runs; dropped when it ends."""

    data: DataBundle
    helper: nn.Module | None
    prefix: int  # frozen leading blocks whose output is the stage's input
    indices: torch.Tensor  # the training samples the stage uses
    steps_per_epoch: int
    epochs: int  # planned epochs (stage.epochs, or what its FLOP budget buys)
    total_steps: int  # planned optimizer steps (the schedule's length)
    step_flops: float  # training FLOPs per sample, blocks after the prefix
    prefix_flops: float  # forward FLOPs per sample of the frozen prefix
    optimizer: torch.optim.Optimizer
    scheduler: Any
    step: nn.Module  # StageStep, DDP-wrapped and/or compiled
    cache: torch.Tensor | None = None
    cache_note: str = "off"  # off | pending | on (...) | off (why)
    all_samples: bool = False  # indices are 0..n-1 of the training split: no gather per batch
    loader: Any = None  # data.stream.EpochLoader of a streamed training split
    batch_size: int = 0  # the stage's batch: train.batch_size, or every sample for full-batch L-BFGS
    sharded: bool = False  # device.shard=fsdp: the trainable groups are FSDP units (engine/sharding.py)
    aux_flops: float = 0.0  # the auxiliary head's share of step_flops (reported apart, charged in it)


def prepare(model: StagedModel, stage: Stage, x: torch.Tensor, y: torch.Tensor
            ) -> tuple[nn.Module | None, int, float, float, float]:
    """The stage's helper, its frozen prefix and FLOPs per sample (training, prefix forward,
    the auxiliary head's share of training), with freezing applied."""
    helper = build_helper(stage.helper)
    if helper is not None:
        helper.to(x.device)
    freeze(model, stage)
    prefix = prefix_len(model, stage)
    step_flops, prefix_flops, aux_flops = measure_stage_flops(stage, model, helper, x, y, prefix)
    return helper, prefix, step_flops, prefix_flops, aux_flops


def stage_indices(data: DataBundle, stage: Stage, seed: int) -> torch.Tensor:
    base = data.labeled if stage.data == "labeled" else torch.arange(len(data.train), device=data.labeled.device)
    if stage.extra.data_fraction < 1.0:  # nested subsets: a fixed seeded order, growing prefix
        order = torch.randperm(len(base), generator=torch.Generator().manual_seed(seed + 17))
        base = base[order[: max(1, round(stage.extra.data_fraction * len(base)))].to(base.device)]
    return base


def wants_cache(stage: Stage, prefix: int, epochs: int) -> bool:
    """Whether the stage caches its frozen prefix's output (memory budget aside): ``on``, or
    ``auto`` when it runs at least two epochs over the same features."""
    return prefix > 0 and (stage.cache == "on" or (stage.cache == "auto" and epochs >= 2))


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Batches of an epoch over n samples: the last may be partial; a lone last sample is
    merged into the batch before it (BatchNorm cannot train on one sample)."""
    return max(1, n // batch_size if n % batch_size == 1 and n > batch_size else math.ceil(n / batch_size))


def planned_length(stage: Stage, n: int, batch_size: int, flops_per_sample: float) -> tuple[int, int]:
    """(epochs, optimizer steps) the stage plans for: its epochs, or what ``max_flops`` buys
    (whole epochs of n samples, then the batches of a last partial epoch)."""
    spe = steps_per_epoch(n, batch_size)
    if stage.epochs is not None:
        return stage.epochs, stage.epochs * spe
    samples = math.ceil(stage.max_flops / max(flops_per_sample, 1e-12))
    full, rest = divmod(samples, n)
    steps = full * spe + min(spe, math.ceil(rest / batch_size))
    return max(1, full + (rest > 0)), max(1, steps)


def enter_stage(model: StagedModel, stage: Stage, data: DataBundle, plan: Plan, opts: EngineOptions,
                world: int, prev_optim: dict[str, Any] | None, mappings: list[dict[str, Any]]) -> StageRuntime:
    """Helper, freezing, optimizer (Adam moments mapped through growth when asked), schedule,
    cache decision, train/eval modes and the stage's step module."""
    indices = stage_indices(data, stage, opts.seed)
    probe = indices[:PROBE_BATCH]
    x, y = data.normalize(data.train.x[probe], plan.input_norm), data.train.y[probe]
    helper, prefix, step_flops, prefix_flops, aux_flops = prepare(model, stage, x, y)
    n = len(indices)
    bs = n if stage.optimizer == "lbfgs" else opts.batch_size  # L-BFGS: the whole set is one batch
    spe = steps_per_epoch(n, bs)
    sharding.set_activation_checkpointing(model, opts.activation_checkpointing)
    step = StageStep(stage, model, helper, prefix)
    sharded = sharding.wanted(opts, stage, world, any(p.requires_grad for p in step.parameters()))
    if sharded:  # in place, before the optimizer sees the parameters (DTensor shards from here on)
        sharding.shard(step, x.device, opts.bf16)
    groups = {name: model.group(name) for name in model.group_names}
    if helper is not None:
        groups["helper"] = helper
    optimizer = build_optimizer(stage, param_groups(stage, groups), opts.fused_optimizer)
    if prev_optim:
        map_optimizer_state(optimizer, model, prev_optim, mappings)
        if sharded:
            sharding.to_shards(optimizer)
    cacheable = prefix > 0 and stage.cache != "off"
    loader = EpochLoader(data.train.x) if data.train.streamed else None
    epochs, total = planned_length(stage, n, bs, step_flops + (0.0 if cacheable else prefix_flops))
    warmup = 0 if stage.optimizer == "lbfgs" else opts.warmup_epochs  # a line search has no LR to warm up
    scheduler = build_scheduler(optimizer, stage.sched, total, spe, warmup, opts.step_size, opts.gamma)
    set_train_mode(model, helper, stage)
    step = build_step(step, opts, 1 if sharded else world, x, y)  # sharded: FSDP reduces, no DDP
    everything = len(indices) == len(data.train) and bool(torch.equal(indices, torch.arange(n, device=indices.device)))
    return StageRuntime(data, helper, prefix, indices, spe, epochs, total, step_flops, prefix_flops,
                        optimizer, scheduler, step, cache_note="pending" if cacheable else "off",
                        all_samples=everything, loader=loader, batch_size=bs, sharded=sharded, aux_flops=aux_flops)


def resume_inside(rt: StageRuntime, saved: Any) -> None:
    """A stage resumed from a mid-stage checkpoint: its helper, optimizer, schedule and RNGs."""
    if rt.helper is not None and saved.helper is not None:
        rt.helper.load_state_dict(saved.helper)
    rt.optimizer.load_state_dict(saved.optimizer)
    rt.scheduler.load_state_dict(saved.scheduler)
    set_rng_state(saved.rng)


def build_step(step: nn.Module, opts: EngineOptions, world: int, x: torch.Tensor, y: torch.Tensor) -> nn.Module:
    """Under torchrun wrapped in DDP, with ``device.compile`` compiled.

    DDP is rebuilt for every stage, so it registers exactly the parameters this stage
    trains (frozen ones have requires_grad False and are not synchronised). A trainable
    parameter the stage's loss does not reach is found by one probe step on a copy (all
    RNGs restored) and then declared (``find_unused_parameters``); otherwise DDP runs
    without that per-step graph search.
    """
    trainable = any(p.requires_grad for p in step.parameters())
    if world > 1 and trainable:
        from torch.nn.parallel import DistributedDataParallel

        probe = copy.deepcopy(step)
        devices = [x.device] if x.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            with torch.no_grad():
                h = probe.model.features(x, 0, probe.prefix)
            loss, _ = probe(h, y)
            loss.backward()
        unused = [n for n, p in probe.named_parameters() if p.requires_grad and p.grad is None]
        step = DistributedDataParallel(
            step, device_ids=[x.device] if x.device.type == "cuda" else None,
            find_unused_parameters=bool(unused))
    if opts.compile:
        torch._dynamo.reset()  # the previous stage's graphs are dead: a fresh cache per stage
        cudagraphs = x.device.type == "cuda" and world == 1  # launch-bound small models
        step = torch.compile(step, mode="reduce-overhead" if cudagraphs else None)
    return step
