"""The engine: the one training loop, which runs any plan. Per stage: grow, enter
(``runtime.enter_stage``), then epochs of steps -- a batch is a slice of a seeded permutation
(read ahead by ``streaming`` when streamed); forward, backward, optimizer step; FLOPs and
time counted -- each followed by evaluation, logs, a checkpoint and the stop decision."""

from __future__ import annotations

import contextlib
import functools
import math
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from stagetrain import distributed
from stagetrain.checkpoint import save, set_rng_state
from stagetrain.checkpoint.schema import restore
from stagetrain.core.errors import StopRequested
from stagetrain.core.plan import Plan, Stage, StopReason
from stagetrain.data import DataBundle, epoch_permutation
from stagetrain.engine import ranks, saving, sharding, solver, stopping, streaming
from stagetrain.engine.cache import build_cache
from stagetrain.engine.evaluate import evaluate
from stagetrain.engine.growing import PROBE_SAMPLES, grow
from stagetrain.engine.nonfinite import NonFiniteGuard, checkpoint_may_follow
from stagetrain.engine.options import EngineOptions
from stagetrain.engine.runtime import StageRuntime, enter_stage, set_train_mode
from stagetrain.engine.state import RunState, StageState
from stagetrain.growth import apply_op
from stagetrain.models import StagedModel, count_parameters, trainable_parameters
from stagetrain.nn.objectives import objective_of, split_metrics
from stagetrain.progress import Reporter
from stagetrain.runs.rundir import MetricsLog, RunDir

Event = dict[str, Any]
_no_step = lambda *_: None  # noqa: E731 - a sink without step-level logging


class Engine:
    """Runs a Plan with EngineOptions on a model and its datasets; everything it talks to
    (run directory, progress reporter, signal flag, metric sinks, run.json updater) is
    given here."""

    def __init__(self, plan: Plan, options: EngineOptions, datasets: dict[str, DataBundle], model: StagedModel,
                 device: torch.device, reporter: Reporter, rundir: RunDir | None = None,
                 stop_flag: dict[str, Any] | None = None, sinks: list[Callable[[Event], None]] | None = None,
                 on_update: Callable[[Engine], None] | None = None):
        self.plan, self.opts, self.datasets, self.model = plan, options, datasets, model
        self.device, self.reporter, self.rundir = device, reporter, rundir
        self.stop_flag = stop_flag if stop_flag is not None else {}
        self.sinks, self.on_update = sinks or [], on_update
        self.world = distributed.world_size()  # processes under torchrun; 1 otherwise
        sharding.require_launched(options, self.world)
        self.state = RunState()
        self.rt: StageRuntime | None = None  # the stage in progress
        self.metrics: MetricsLog | None = None
        self.nonfinite = NonFiniteGuard(options.on_nonfinite, device.type, self.state, self._log)
        self._pending: dict[str, Any] | None = None  # a checkpoint being resumed, until its stage is entered
        self._agreed_stop = False  # under torchrun: a signal reached some rank (agreed each step)
        # bf16 autocast only when asked: entering a disabled autocast still costs ~10 us a step
        self._amp = (functools.partial(torch.autocast, device.type, torch.bfloat16) if options.bf16
                     else contextlib.nullcontext)

    @property
    def data(self) -> DataBundle:
        return self.datasets["target"]

    @property
    def helper(self) -> nn.Module | None:
        return self.rt.helper if self.rt is not None else None

    @property
    def optimizer(self) -> torch.optim.Optimizer | None:
        return self.rt.optimizer if self.rt is not None else None

    def restore(self, state: dict[str, Any]) -> None:
        """Load a checkpoint's model and position; stage objects are restored on entry."""
        saved = restore(state)
        self.model = StagedModel(saved.arch).to(self.device)
        saving.load_model(self.model, state)  # either format
        self.state = self.nonfinite.state = RunState.from_flat(saved.run_state)
        if distributed.rank() != 0:  # the saved epoch sums are global: rank 0 carries them on
            self.state.cur.epoch_sums = [0.0, 0.0, 0.0]
        self._pending = state

    def run(self) -> dict[str, float]:
        """Run the plan from the current state to the end; returns the final metrics."""
        recorded = restore(self._pending).metrics_lines if self._pending is not None else None
        if self.rundir is not None:
            self.metrics = MetricsLog(self.rundir.metrics, recorded)
        try:
            for k in range(self.state.stage, len(self.plan.stages)):
                if self.state.run_stop is not None:
                    break
                self._run_stage(k, self.plan.stages[k])
            return self._finish()
        finally:
            if self.metrics is not None:
                self.metrics.close()

    def _run_stage(self, k: int, stage: Stage) -> None:
        st, pending = self.state, self._pending
        resuming_inside = pending is not None and st.in_stage
        if pending is not None and not st.in_stage:
            set_rng_state(restore(pending).rng)  # stage-start checkpoint: RNG before entry
        mappings = []
        if stage.ops and not st.in_stage:
            def probe(model: StagedModel) -> dict[str, float]:
                return evaluate(model, None, self.data, "val", None, self.plan.input_norm,
                                self.opts.eval_batch_size, self.opts.bf16, PROBE_SAMPLES)

            self.model, mappings = grow(self.model, stage, k, self.opts.seed, probe, self._log, st)
        prev = st.prev_optim if self.plan.optimizer_state == "map" and not st.in_stage else None
        self.rt = rt = enter_stage(self.model, stage, self.datasets[stage.dataset], self.plan, self.opts,
                                   self.world, prev, mappings)
        if resuming_inside:
            saving.resume_stage(rt, pending)
        else:
            self._log({"event": "stage_start", "stage": k + 1, "stage_name": stage.name,
                       "trainable": list(stage.trainable), "objective": stage.objective,
                       "params": count_parameters(self.model)})
        self._pending, st.in_stage = None, True
        self.reporter.stage_start(f"stage {k + 1}/{len(self.plan.stages)} {stage.name}", rt.total_steps,
                                  st.cur.epoch * rt.steps_per_epoch + st.cur.batch)
        while st.cur.stop is None and st.cur.epoch < rt.epochs:
            if rt.cache_note == "pending":
                build_cache(rt, self.model, stage, self.opts, self.plan.input_norm, st)
            self._train_epoch(k, stage, rt)
            self._end_epoch(k, stage, rt)
        self._end_stage(k, stage, rt)

    def _train_epoch(self, k: int, stage: Stage, rt: StageRuntime) -> None:
        st, cur, bs = self.state, self.state.cur, rt.batch_size
        perm = epoch_permutation(len(rt.indices), self.opts.seed, k, cur.epoch, self.device)
        xs = streaming.epoch_inputs(rt, perm, cur.batch, bs, self.world, self.opts.seed, k, cur.epoch)  # None: memory
        prefix = rt.prefix_flops if rt.cache is None else 0.0  # the frozen prefix: once per step, not per pass
        start = time.perf_counter()
        for b in range(cur.batch, rt.steps_per_epoch):
            positions = perm[b * bs:(b + 1) * bs] if b < rt.steps_per_epoch - 1 else perm[b * bs:]
            m = len(positions)
            if m < self.world:  # a last batch smaller than the number of ranks: skipped by all
                cur.batch = b + 1
                continue
            passes = self._step(k, stage, rt, positions, b, None if xs is None else next(xs))
            cur.batch = b + 1
            st.global_step += 1
            cur.steps += 1
            cur.samples += m
            st.charge(flops=(rt.step_flops * passes + prefix) * m)
            self.reporter.step(f"epoch {cur.epoch + 1}/{rt.epochs}", cur.epoch_sums)
            for sink in self.sinks:  # step-level logging (logger.every_steps): each sink keeps its own pace
                getattr(sink, "on_step", _no_step)(st.global_step, k + 1, cur.epoch_sums, rt.scheduler)
            stopping.after_step(self.plan, stage, st)
            signal = self.stop_flag.get("signal") if self.world == 1 else self._agreed_stop
            if signal or (self.opts.every_steps and st.global_step % self.opts.every_steps == 0):
                st.charge(seconds=time.perf_counter() - start)
                start = time.perf_counter()
                self._save_last(k, stage)
                if signal:
                    raise StopRequested(self.stop_flag.get("signal") or "a signal to another rank")
            if cur.stop is not None:
                break
        st.charge(seconds=time.perf_counter() - start)

    def _step(self, k: int, stage: Stage, rt: StageRuntime, positions: torch.Tensor, b: int,
              streamed: torch.Tensor | None) -> int:
        """One batch (raw inputs read ahead if ``streamed``): forward, checks, backward, steps;
        returns the forward-backward passes it made (L-BFGS: one per loss evaluation)."""
        mine = distributed.shard(positions) if self.world > 1 else positions  # this rank's slice
        idx = mine if rt.all_samples else rt.indices[mine]
        y = rt.data.train.y[idx]
        if rt.cache is not None:
            h = rt.cache[mine].float()
        else:
            x = rt.data.train.x.index_select(0, idx) if streamed is None else streamed  # ~10x faster than x[idx]
            h = rt.data.normalize(x, self.plan.input_norm)
            if rt.prefix > 0:
                with torch.no_grad():
                    h = self.model.features(h, 0, rt.prefix)
        with ranks.noise(self.opts.seed, self.state.global_step, self.device, self.world), self._amp():
            loss, logits = rt.step(h, y)
        guard = self.nonfinite
        if self.world > 1:
            loss, self._agreed_stop = ranks.agree_step(loss, guard.exact, bool(self.stop_flag.get("signal")))
        skip = guard.exact and not math.isfinite(loss.item()) and guard.found(k, stage, "loss", h)
        rt.optimizer.zero_grad(set_to_none=True)
        if not skip:
            # DDP averages over ranks; slices of unequal size are weighted to the global mean
            share = len(mine) * self.world / len(positions)
            (loss if share == 1 else loss * share).backward()
            budgeted = self.plan.flop_budget is not None or stage.max_flops is not None
            look = checkpoint_may_follow(b == rt.steps_per_epoch - 1, self.state.global_step + 1, self.opts.every_steps,
                                         bool(self.stop_flag.get("signal")) or self.world > 1 or budgeted)
            skip = guard.grads(k, stage, rt.optimizer, loss, look)
        passes = 1
        if not skip:
            loss, logits, passes = solver.optimizer_step(rt, stage, h, y, loss, logits, share)
            self.state.nonfinite_streak = 0
        rt.scheduler.step()
        if not skip:  # a skipped batch counts in neither the epoch's loss nor its accuracy
            sums = self.state.cur.epoch_sums  # this rank's share; summed over ranks at the epoch end
            sums[0] += loss.detach() * len(mine)
            if logits is not None:
                sums[1] += (logits.argmax(1) == y).sum()
            sums[2] += len(mine)
        return passes

    def _end_epoch(self, k: int, stage: Stage, rt: StageRuntime) -> None:
        st, cur = self.state, self.state.cur
        sums = distributed.all_sum(cur.epoch_sums) if self.world > 1 else cur.epoch_sums
        loss_sum, correct, n = (float(v) for v in sums)
        if not math.isfinite(loss_sum):
            self.nonfinite.found(k, stage)
        train = split_metrics(objective_of(stage, self.model), loss_sum / max(n, 1), correct, int(n),
                              rt.data.info.get("bytes_per_token"))
        val = self._evaluate(stage, "val")
        base = {"stage": k + 1, "stage_name": stage.name, "epoch": cur.epoch + 1,
                "step": st.global_step, "flops": st.flops, "time": round(st.seconds, 4)}
        self._log({**base, "split": "train", "lr": rt.optimizer.param_groups[-1]["lr"], **train})
        self._log({**base, "split": "val", **val})
        cur.metrics = {**{f"train/{m}": v for m, v in train.items()}, **{f"val/{m}": v for m, v in val.items()}}
        stopping.update_best(st, val)
        is_best = stopping.take_best(stage, st, val)
        cur.epoch, cur.batch, cur.epoch_sums = cur.epoch + 1, 0, [0.0, 0.0, 0.0]
        stopping.after_epoch(self.plan, stage, st, rt.epochs, self.opts.patience)
        self.reporter.epoch_end(f"stage {k + 1} {stage.name} epoch {cur.epoch}/{rt.epochs}: "
                                + " ".join(f"{m}={v:.4f}" for m, v in cur.metrics.items()), cur.metrics)
        self._save_last(k, stage)
        if is_best:  # sharded: every rank joins the gather
            saving.save_best(self, k, stage)
        if self.on_update is not None:
            self.on_update(self)

    def _end_stage(self, k: int, stage: Stage, rt: StageRuntime) -> None:
        st, cur = self.state, self.state.cur
        self.model, st.prev_optim = saving.end_stage(self, rt, stage, self.plan.optimizer_state == "map")
        if stage.helper_to_head and rt.helper is not None:
            self.model.head.layer.load_state_dict(rt.helper.layer.state_dict())
        reason = StopReason(cur.stop or StopReason.EPOCHS.value)
        score = stopping.complexity(self.plan, stage, st, count_parameters(self.model))
        st.summaries.append({
            "stage": k + 1, "name": stage.name, "objective": stage.objective,
            "trainable": list(stage.trainable), "epochs": cur.epoch, "steps": cur.steps,
            "samples": cur.samples, "flops": cur.flops, "aux_flops": rt.aux_flops * cur.samples, "seconds": round(cur.seconds, 3),
            "params": count_parameters(self.model), "trainable_params": trainable_parameters(self.model, rt.helper),
            "cache": rt.cache_note, "solver_passes": getattr(rt, "solver_passes", None),  # L-BFGS: passes used
            "final": dict(cur.metrics), "best": dict(cur.best_metrics),
            "stop_reason": reason.value, "stop_message": reason.message, "complexity_score": score,
        })
        self._log({"event": "stage_end", "stage": k + 1, "stage_name": stage.name,
                   "stop_reason": reason.value, "flops": st.flops, "time": round(st.seconds, 4)})
        self.rt = None
        st.stage, st.in_stage, st.cur = k + 1, False, StageState()
        if self.rundir is not None:
            state = self._snapshot(k + 1, None)
            if self.opts.stage_checkpoints:
                save(state, self.rundir.stage_checkpoint(k, stage.name))
            save(state, self.rundir.last, keep_previous=self.rundir.last_prev)

    def _evaluate(self, stage: Stage | None, split: str, limit: int | None = None) -> dict[str, float]:
        bundle = self.data if stage is None else self.datasets[stage.dataset]
        model, helper = saving.evaluated(self, stage)  # sharded: a gathered copy
        out = evaluate(model, helper, bundle, split, stage, self.plan.input_norm,
                       self.opts.eval_batch_size, self.opts.bf16, limit)
        if stage is not None and stage.trainable:
            set_train_mode(self.model, self.helper, stage)
        return out

    def _finish(self) -> dict[str, float]:
        g = torch.Generator().manual_seed(self.opts.seed)
        for op in self.plan.final_ops:  # e.g. merge LoRA adapters into the weights
            self.model, _ = apply_op(self.model, op, g)
        final = {f"{split}/{m}": v for split in ("val", "test") for m, v in self._evaluate(None, split).items()}
        self._log({"event": "final", "step": self.state.global_step, "flops": self.state.flops,
                   "time": round(self.state.seconds, 4), **final})
        return final

    def _log(self, event: Event) -> None:
        if self.metrics is not None and self.metrics.log(event):
            for sink in self.sinks:  # e.g. TensorBoard; sees each event once, as the file does
                sink(event)

    def _snapshot(self, k: int, stage: Stage | None, run_state: dict[str, Any] | None = None) -> dict[str, Any]:
        return saving.plain_snapshot(self, k, stage, run_state)

    def _save_last(self, k: int, stage: Stage) -> None:
        saving.save_last(self, k, stage)
