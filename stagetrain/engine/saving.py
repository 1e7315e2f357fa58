"""The engine's checkpoints: what a snapshot of the running engine holds, in which format.

A stage that runs unsharded (and every stage boundary) writes the ordinary one-file
checkpoint (``checkpoint.io``). A stage sharded by FSDP (``device.shard=fsdp``) writes its
``last`` checkpoints as DCP folders (``checkpoint.sharded``: every rank its shards); its
``best`` checkpoint is the gathered full model in the ordinary format, like a stage end.
Resuming reads either format into either kind of stage: DCP loads whole tensors into a plain
model and shards into a sharded one, so the number of ranks may change (then not bit-identical).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from stagetrain import distributed
from stagetrain.checkpoint import save, set_rng_state, snapshot
from stagetrain.checkpoint.schema import restore, sharded_meta
from stagetrain.checkpoint.sharded import folder_of, load_tensors, save_sharded
from stagetrain.core.plan import Stage
from stagetrain.engine import sharding
from stagetrain.engine.runtime import StageRuntime, freeze, resume_inside
from stagetrain.models import StagedModel


def stage_module(step: nn.Module) -> nn.Module:
    """The StageStep inside a compiled and/or DDP-wrapped step."""
    step = getattr(step, "_orig_mod", step)
    return getattr(step, "module", step)


def plain_snapshot(engine: Any, k: int, stage: Stage | None, run_state: dict[str, Any] | None = None,
                   model: nn.Module | None = None, helper: nn.Module | None = None) -> dict[str, Any]:
    rt = engine.rt if stage is not None else None
    return snapshot(model or engine.model, helper or (rt.helper if rt else None), rt.optimizer if rt else None,
                    rt.scheduler if rt else None, k, stage.name if stage else None,
                    run_state or engine.state.flat(), engine.opts.config_yaml,
                    list(stage.trainable) if stage else [], engine.metrics.position if engine.metrics else 0)


def save_last(engine: Any, k: int, stage: Stage) -> None:
    """The mid-stage ``last`` checkpoint (every rank joins: global epoch sums; sharded: DCP)."""
    sums = engine.state.cur.epoch_sums
    if engine.world > 1:  # every rank joins; rank 0 saves the global sums
        sums = distributed.all_sum(sums)
    flat = engine.state.flat()
    flat["epoch_sums"] = [float(v) for v in sums]
    rt = engine.rt
    if rt is not None and rt.sharded:  # every rank writes its shards
        _save_sharded(engine, k, stage, flat)
        return
    if engine.rundir is None:
        return
    save(plain_snapshot(engine, k, stage, flat), engine.rundir.last, keep_previous=engine.rundir.last_prev)


def _save_sharded(engine: Any, k: int, stage: Stage, flat: dict[str, Any]) -> None:
    from torch.distributed.checkpoint.state_dict import (
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    rt, step = engine.rt, stage_module(engine.rt.step)
    # buffers (BatchNorm statistics) are not sharded and DCP saves one rank's copy: make it rank 0's, the
    # copy the gathered model and DDP use, so a resumed run ends bit-identical (it was rank 1's here)
    sharding.broadcast_buffers(step)
    osd = get_optimizer_state_dict(step, rt.optimizer)
    tensors = {"model": get_model_state_dict(step),
               "optim": {fqn: {key: v for key, v in entry.items() if v is not None} for fqn, entry in osd["state"].items()}}
    groups = [{"name": g.get("name"), "lr": g["lr"]} for g in rt.optimizer.param_groups]
    meta = sharded_meta(engine.model.spec, rt.scheduler, osd["param_groups"], k, stage.name, flat,
                        engine.opts.config_yaml, list(stage.trainable),
                        engine.metrics.position if engine.metrics else 0, groups)
    rundir = engine.rundir  # rank 0's; every rank writes its shards into the same folder
    last = Path(distributed.agree(str(rundir.last) if rundir is not None else ""))
    prev = Path(distributed.agree(str(rundir.last_prev) if rundir is not None else ""))
    save_sharded(tensors, meta, folder_of(last), folder_of(prev), engine.world)


def save_best(engine: Any, k: int, stage: Stage) -> None:
    """The best checkpoint of the stage so far: the full model (gathered when sharded)."""
    rt = engine.rt
    if rt is not None and rt.sharded:
        model, helper = sharding.gathered(stage_module(rt.step), stage, engine.device)
        if engine.rundir is not None:
            state = plain_snapshot(engine, k, stage, model=model, helper=helper)
            state["optimizer"] = None  # its moments are in the sharded last checkpoint
            save(state, engine.rundir.best)
        return
    if engine.rundir is not None:
        save(plain_snapshot(engine, k, stage), engine.rundir.best)


def load_model(model: StagedModel, state: dict[str, Any]) -> None:
    """A checkpoint's model weights into a plain model (a sharded checkpoint: its shards, whole)."""
    if "sharded" not in state:
        model.load_state_dict(restore(state).model)
        return
    targets = {"model": {f"model.{k}": v for k, v in model.state_dict().items()}}
    load_tensors(Path(state["sharded"]), targets)
    model.load_state_dict({k[len("model."):]: v for k, v in targets["model"].items()})


def resume_stage(rt: StageRuntime, state: dict[str, Any]) -> None:
    """A stage resumed from a mid-stage checkpoint of either format, into a plain or sharded stage."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    saved, step = restore(state), stage_module(rt.step)
    if "sharded" not in state:
        if rt.sharded and rt.helper is not None and saved.helper is not None:
            set_model_state_dict(step, {f"helper.{k}": v for k, v in saved.helper.items()},
                                 options=StateDictOptions(full_state_dict=True, strict=False))
            saved.helper = None
        resume_inside(rt, saved)
        if rt.sharded:
            sharding.to_shards(rt.optimizer)
        return
    osd = get_optimizer_state_dict(step, rt.optimizer)  # state created (zero-LR step), to be overwritten
    helper = {k: v for k, v in get_model_state_dict(step).items() if k.startswith("helper.")}
    targets = {"optim": {fqn: dict(entry) for fqn, entry in osd["state"].items()}, "model": helper}
    load_tensors(Path(state["sharded"]), targets)
    if helper:
        set_model_state_dict(step, targets["model"], options=StateDictOptions(strict=False))
    set_optimizer_state_dict(step, rt.optimizer, {"state": targets["optim"],
                                                  "param_groups": saved.optimizer["param_groups"]})
    rt.scheduler.load_state_dict(saved.scheduler)
    set_rng_state(saved.rng)


def end_stage(engine: Any, rt: StageRuntime, stage: Stage, want_optim: bool) -> tuple[StagedModel, dict[str, Any]]:
    """The plain model after a stage and its optimizer state by parameter name (whole tensors)."""
    from stagetrain.growth import optimizer_state_by_name

    if not rt.sharded:
        sharding.set_activation_checkpointing(engine.model, False)
        return engine.model, optimizer_state_by_name(rt.optimizer, engine.model) if want_optim else {}
    step = stage_module(rt.step)
    prev = sharding.full_optimizer_state(step, rt.optimizer) if want_optim else {}
    model, rt.helper = sharding.gathered(step, stage, engine.device)
    freeze(model, stage)  # what the stage trained, as the summary counts it
    return model, prev


def evaluated(engine: Any, stage: Stage | None) -> tuple[nn.Module, nn.Module | None]:
    """The model and helper an evaluation reads: a gathered plain copy while a stage is sharded
    (every rank evaluates its own slice, so FSDP's per-forward collectives would not line up)."""
    rt = engine.rt
    if rt is not None and rt.sharded and stage is not None:
        return sharding.gathered(stage_module(rt.step), stage, engine.device)
    return engine.model, engine.helper
