"""The engine: the one training loop, which runs any plan.

For each stage it builds the helper, freezes what does not train (requires_grad False
AND eval mode), builds the optimizer and schedule, caches the frozen prefix's outputs when
that is exact and worth it, then trains epoch by epoch: a batch is a slice of a seeded
permutation, one forward/backward/step, FLOPs and time counted. After each epoch it
evaluates, logs, checkpoints, and decides whether the stage stops (and why).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from stagetrain import checkpoint as ckpt
from stagetrain import distributed
from stagetrain.data import DataBundle, Split, epoch_permutation
from stagetrain.errors import StagetrainError, StopRequested
from stagetrain.flops import PROBE_BATCH, measure_step_flops
from stagetrain.growth import apply_op, map_optimizer_state, optimizer_state_by_name
from stagetrain.models import StagedModel, count_parameters
from stagetrain.objectives import build_helper, stage_loss
from stagetrain.optim import build_optimizer, build_scheduler, param_groups
from stagetrain.plan import Plan, Stage, StopReason, target_met
from stagetrain.progress import Reporter
from stagetrain.rundir import MetricsLog, RunDir

log = logging.getLogger("stagetrain")
NONFINITE_MAX_IN_A_ROW = 10  # train.on_nonfinite=skip_batch stops at this many skipped batches in a row
NONFINITE_LOOK_EVERY = 100  # GPU, on_nonfinite=stop: steps between reads of the non-finite flag (at most)


def prefix_len(model: StagedModel, stage: Stage) -> int:
    """Number of leading blocks of the stage's path that are frozen: their output is the
    stage's input, computed without gradients (and cached when that pays)."""
    if stage.bn != "eval":  # frozen BN layers that update statistics are not a fixed function
        return 0
    stop = len(model.block_names) if stage.stop_block is None else stage.stop_block
    p = 0
    while p < stop and model.block_names[p] not in stage.trainable:
        p += 1
    return p


def freeze(model: StagedModel, stage: Stage) -> None:
    """requires_grad True exactly for what the stage trains.

    A trainable group trains whole unless ``stage.partial`` names the parameter-name
    prefixes that train in it (BitFit: biases; LoRA: adapters). ``stage.bn=train_affine``
    also trains the BatchNorm scale and shift of frozen groups.
    """
    for p in model.parameters():  # no stale gradient from the previous stage stays behind
        p.grad = None
    for name in [*model.block_names, "head"]:
        group = model.group(name)
        if name in stage.trainable and name in stage.partial:
            for pname, p in group.named_parameters():
                p.requires_grad_(any(pname.startswith(prefix) for prefix in stage.partial[name]))
        else:
            group.requires_grad_(name in stage.trainable)
            if name not in stage.trainable and stage.bn == "train_affine":
                for m in group.modules():
                    if isinstance(m, nn.modules.batchnorm._BatchNorm):
                        m.requires_grad_(True)


class StageStep(nn.Module):
    """A stage's training forward as one module: the loss of a batch that enters block ``prefix``.

    It is what DDP wraps (so a stage's helper -- auxiliary head, decoder, visible bias --
    has its gradients averaged with the blocks it trains) and what ``device.compile``
    compiles. The engine builds a new one at every stage entry, because the model (growth),
    the helper and what trains change between stages.
    """

    def __init__(self, stage: Stage, model: StagedModel, helper: nn.Module | None, prefix: int):
        super().__init__()
        self.stage, self.model, self.helper, self.prefix = stage, model, helper, prefix

    def forward(self, h: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        return stage_loss(self.stage, self.model, self.helper, h, y, self.prefix, True)


@dataclass
class RunState:
    """Where the run is and what it has counted; everything a checkpoint restores."""

    stage: int = 0
    epoch: int = 0  # stage-local epoch in progress
    batch: int = 0  # next batch of that epoch
    in_stage: bool = False  # False: the stage at ``stage`` has not been entered yet
    global_step: int = 0
    flops: float = 0.0
    seconds: float = 0.0
    best: float | None = None  # best val/acc of the full model, for best.pt
    stage_best: float | None = None
    bad_epochs: int = 0
    stage_stop: str | None = None
    stage_steps: int = 0
    stage_samples: int = 0
    stage_flops: float = 0.0
    stage_seconds: float = 0.0
    stage_metrics: dict[str, float] = field(default_factory=dict)
    stage_best_metrics: dict[str, float] = field(default_factory=dict)
    epoch_sums: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])  # loss, correct, n
    summaries: list[dict[str, Any]] = field(default_factory=list)
    run_stop: str | None = None  # set when the whole run stops early (target, budget, complexity)
    prev_score: float | None = None  # complexity-penalised score of the previous stage
    prev_optim: dict[str, Any] = field(default_factory=dict)  # Adam moments by parameter name
    skipped_batches: int = 0  # train.on_nonfinite=skip_batch: batches skipped so far
    nonfinite_streak: int = 0  # ... and how many of the latest in a row


class Engine:
    def __init__(self, cfg: Any, plan: Plan, data: DataBundle, model: StagedModel,
                 device: torch.device, rundir: RunDir | None, reporter: Reporter,
                 config_yaml: str, stop_flag: dict[str, Any] | None = None):
        self.cfg, self.plan, self.data, self.model = cfg, plan, data, model
        self.datasets = {"target": data}  # strategies may add more (finetune: "source")
        self.stage_data = data
        self.device, self.rundir, self.reporter = device, rundir, reporter
        self.config_yaml = config_yaml
        self.stop_flag = stop_flag if stop_flag is not None else {}
        self.state = RunState()
        self.metrics: MetricsLog | None = None
        self.sinks: list[Callable[[dict[str, Any]], None]] = []
        self.helper: nn.Module | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler: Any = None
        self.cache: torch.Tensor | None = None
        self.cache_note = "off"
        self.autocast = cfg.device.precision == "bf16"
        self.world = distributed.world_size()  # processes under torchrun; 1 otherwise
        self.step: Any = None  # the stage's StageStep (DDP-wrapped, compiled), built at stage entry
        self._agreed_stop = False  # under torchrun: a signal reached some rank (agreed each step)
        self.on_update: Any = None  # callback(run_state) after each epoch, for run.json
        self.source: dict[str, Any] | None = None  # what the strategy's init_model loaded, if anything
        self._pending: dict[str, Any] | None = None  # a checkpoint being resumed, until its stage is entered

    # ----------------------------------------------------------------- resume
    def restore(self, state: dict[str, Any]) -> None:
        """Load a checkpoint's model and position; stage objects are restored on entry."""
        self.model = StagedModel(state["arch"]).to(self.device)
        self.model.load_state_dict(state["model"])
        self.state = RunState(**state["run_state"])
        if distributed.rank() != 0:  # the saved epoch sums are global: rank 0 carries them on
            self.state.epoch_sums = [0.0, 0.0, 0.0]
        self._pending = state

    # ----------------------------------------------------------------- stages
    def _groups(self, stage: Stage) -> dict[str, nn.Module]:
        """Every group with parameters to optimize (param_groups keeps those with requires_grad)."""
        groups = {name: self.model.group(name) for name in [*self.model.block_names, "head"]}
        if self.helper is not None:
            groups["helper"] = self.helper
        return groups

    def _set_train_mode(self, stage: Stage) -> None:
        """Train mode for what trains; frozen groups stay in eval (BN stats, dropout frozen)."""
        self.model.train()
        for name in [*self.model.block_names, "head"]:
            if name not in stage.trainable:
                self.model.group(name).eval()
                if stage.bn != "eval":  # train_stats / train_affine: frozen BN keeps updating statistics
                    for m in self.model.group(name).modules():
                        if isinstance(m, nn.modules.batchnorm._BatchNorm):
                            m.train()
        if self.helper is not None:
            self.helper.train()

    def _grow(self, k: int, stage: Stage) -> None:
        """Apply the stage's growth ops; log the probe-batch loss just before and after."""
        probe = self.evaluate(None, "val", limit=256)
        params = count_parameters(self.model)
        g = torch.Generator().manual_seed(self.cfg.seed * 7919 + k)
        mappings = []
        for op in stage.ops:
            self.model, info = apply_op(self.model, op, g)
            mappings.append(info)
        after = self.evaluate(None, "val", limit=256)
        self._log({"event": "growth", "stage": k + 1, "stage_name": stage.name, "ops": stage.ops,
                   "probe_loss_before": probe["loss"], "probe_loss_after": after["loss"],
                   "params_before": params, "params_after": count_parameters(self.model),
                   "step": self.state.global_step, "flops": self.state.flops})
        self._growth_mappings = mappings

    def _stage_indices(self, stage: Stage) -> torch.Tensor:
        base = self.stage_data.labeled if stage.data == "labeled" else torch.arange(len(self.stage_data.train), device=self.device)
        if stage.data_fraction < 1.0:  # nested subsets: a fixed seeded order, growing prefix
            order = torch.randperm(len(base), generator=torch.Generator().manual_seed(self.cfg.seed + 17))
            base = base[order[: max(1, round(stage.data_fraction * len(base)))].to(base.device)]
        return base

    def _enter_stage(self, k: int, stage: Stage, fresh: bool) -> None:
        self.stage_data = self.datasets[stage.dataset]
        self._growth_mappings = []
        if fresh and stage.ops:
            self._grow(k, stage)
        self.helper = build_helper(stage.helper)
        if self.helper is not None:
            self.helper.to(self.device)
        freeze(self.model, stage)
        self.prefix = prefix_len(self.model, stage)
        self.indices = self._stage_indices(stage)
        n, bs = len(self.indices), self.cfg.train.batch_size
        self.steps_per_epoch = max(1, n // bs if n % bs == 1 and n > bs else math.ceil(n / bs))
        self.optimizer = build_optimizer(stage, param_groups(stage, self._groups(stage)))
        if fresh and self.plan.optimizer_state == "map" and self.state.prev_optim:
            map_optimizer_state(self.optimizer, self.model, self.state.prev_optim, self._growth_mappings)
        self.scheduler = build_scheduler(self.optimizer, stage.sched, self.cfg.sched,
                                         stage.epochs * self.steps_per_epoch, self.steps_per_epoch)
        self.cache, self.cache_note = None, "off"
        probe = self.indices[:PROBE_BATCH]
        x = self.stage_data.normalize(self.stage_data.train.x[probe], self.plan.input_norm)
        self.step_flops, self.prefix_flops = measure_step_flops(
            stage, self.model, self.helper, x, self.stage_data.train.y[probe], self.prefix)
        if self.prefix > 0 and stage.cache != "off":
            self.cache_note = "pending"
        self._set_train_mode(stage)
        self.step = self._build_step(stage, x, self.stage_data.train.y[probe])

    def _build_step(self, stage: Stage, x: torch.Tensor, y: torch.Tensor) -> nn.Module:
        """The stage's StageStep; under torchrun wrapped in DDP, with ``device.compile`` compiled.

        DDP is rebuilt for every stage, so it registers exactly the parameters this stage
        trains (frozen ones have requires_grad False and are not synchronised). A trainable
        parameter the stage's loss does not reach is found by one probe step on a copy (all
        RNGs restored) and then declared (``find_unused_parameters``); otherwise DDP runs
        without that per-step graph search.
        """
        step: nn.Module = StageStep(stage, self.model, self.helper, self.prefix)
        trainable = any(p.requires_grad for p in step.parameters())
        if self.world > 1 and trainable:
            from torch.nn.parallel import DistributedDataParallel

            probe = copy.deepcopy(step)
            devices = [x.device] if x.device.type == "cuda" else []
            with torch.random.fork_rng(devices=devices):
                with torch.no_grad():
                    h = probe.model.features(x, 0, self.prefix)
                loss, _ = probe(h, y)
                loss.backward()
            unused = [n for n, p in probe.named_parameters() if p.requires_grad and p.grad is None]
            step = DistributedDataParallel(
                step, device_ids=[self.device] if self.device.type == "cuda" else None,
                find_unused_parameters=bool(unused))
        if self.cfg.device.compile:
            torch._dynamo.reset()  # the previous stage's graphs are dead: a fresh cache per stage
            cudagraphs = self.device.type == "cuda" and self.world == 1  # launch-bound small models
            step = torch.compile(step, mode="reduce-overhead" if cudagraphs else None)
        return step

    def _build_cache(self, stage: Stage) -> None:
        """Frozen prefix output over the stage's data, computed once (exact: prefix in eval)."""
        n = len(self.indices)
        shape = self.model.feature_shape(self.prefix - 1)
        dtype = torch.bfloat16 if self._cache_dtype == "bf16" else torch.float32
        nbytes = n * math.prod(shape) * (2 if dtype == torch.bfloat16 else 4)
        # the stage's epochs, not those left: a resumed stage must decide as the uninterrupted one did
        if stage.cache == "auto" and stage.epochs < 2:
            self.cache_note = "off (fewer than 2 epochs)"
            return
        if nbytes > self._cache_max_bytes:
            self.cache_note = f"off ({nbytes / 2**20:.0f} MiB > cache_max_bytes)"
            return
        start = time.perf_counter()
        out = torch.empty((n, *shape), dtype=dtype, device=self.device)
        bs = self.cfg.train.batch_size  # training-sized chunks: large conv chunks run 2-4x slower per sample
        with torch.no_grad():
            for i in range(0, n, bs):
                idx = self.indices[i:i + bs]
                x = self.stage_data.normalize(self.stage_data.train.x[idx], self.plan.input_norm)
                with torch.autocast(self.device.type, torch.bfloat16, enabled=self.autocast):
                    out[i:i + bs] = self.model.features(x, 0, self.prefix).to(dtype)
        self.cache = out
        self.cache_note = f"on ({nbytes / 2**20:.1f} MiB)"
        cost = self.prefix_flops * n
        if self.state.epoch == 0 and self.state.batch == 0:  # a resumed stage counted its build already
            self.state.flops += cost
            self.state.stage_flops += cost
        elapsed = time.perf_counter() - start
        self.state.seconds += elapsed
        self.state.stage_seconds += elapsed

    @property
    def _cache_dtype(self) -> str:
        return getattr(self.cfg.strategy, "cache_dtype", "fp32")

    @property
    def _cache_max_bytes(self) -> int:
        return getattr(self.cfg.strategy, "cache_max_bytes", 2 * 1024**3)

    # ----------------------------------------------------------------- loop
    def run(self) -> dict[str, Any]:
        """Run the plan from the current state to the end; returns the final metrics."""
        recorded = self._pending["metrics_lines"] if self._pending is not None else None
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
        st = self.state
        pending = self._pending
        if pending is not None and not st.in_stage:
            ckpt.set_rng_state(pending["rng"])  # stage-start checkpoint: RNG before entry
        self._enter_stage(k, stage, fresh=not st.in_stage)
        if pending is not None and st.in_stage:
            if self.helper is not None and pending.get("helper") is not None:
                self.helper.load_state_dict(pending["helper"])
            self.optimizer.load_state_dict(pending["optimizer"])
            self.scheduler.load_state_dict(pending["scheduler"])
            ckpt.set_rng_state(pending["rng"])
        if pending is None or not st.in_stage:
            self._log({"event": "stage_start", "stage": k + 1, "stage_name": stage.name,
                       "trainable": list(stage.trainable), "objective": stage.objective,
                       "params": count_parameters(self.model)})
        self._pending = None
        st.in_stage = True
        total = stage.epochs * self.steps_per_epoch
        self.reporter.stage_start(f"stage {k + 1}/{len(self.plan.stages)} {stage.name}",
                                  total, st.epoch * self.steps_per_epoch + st.batch)
        while st.stage_stop is None and st.epoch < stage.epochs:
            if self.cache_note == "pending":
                self._build_cache(stage)
            self._train_epoch(k, stage)
            self._end_epoch(k, stage)
        self._end_stage(k, stage)

    def _batch_input(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        idx = self.indices[positions]
        y = self.stage_data.train.y[idx]
        if self.cache is not None:
            return self.cache[positions].float(), y
        x = self.stage_data.normalize(self.stage_data.train.x[idx], self.plan.input_norm)
        if self.prefix > 0:
            with torch.no_grad():
                x = self.model.features(x, 0, self.prefix)
        return x, y

    def _train_epoch(self, k: int, stage: Stage) -> None:
        st, bs = self.state, self.cfg.train.batch_size
        n = len(self.indices)
        perm = epoch_permutation(n, self.cfg.seed, k, st.epoch, self.device)
        every = self.cfg.checkpoint.every_steps
        # CPU, or skip_batch (which must decide per batch): look at every step; else batched
        check_each_step = self.device.type == "cpu" or self.cfg.train.on_nonfinite == "skip_batch"
        start = time.perf_counter()
        for b in range(st.batch, self.steps_per_epoch):
            positions = perm[b * bs:(b + 1) * bs] if b < self.steps_per_epoch - 1 else perm[b * bs:]
            m = len(positions)
            if m < self.world:  # a last batch smaller than the number of ranks: skipped by all
                st.batch = b + 1
                continue
            mine = distributed.shard(positions)  # this rank's slice of the global batch
            h, y = self._batch_input(mine)
            with self._noise(st.global_step), torch.autocast(self.device.type, torch.bfloat16, enabled=self.autocast):
                loss, logits = self.step(h, y)
            if self.world > 1:
                loss = self._agree_step(loss, check_each_step)
            skip = check_each_step and not math.isfinite(loss.item()) and self._nonfinite(k, stage, "loss")
            self.optimizer.zero_grad(set_to_none=True)
            if not skip:
                # DDP averages over ranks; slices of unequal size are weighted to the global mean
                (loss if len(mine) * self.world == m else loss * (len(mine) * self.world / m)).backward()
                skip = self._nonfinite_grads(k, stage, loss, check_each_step, self._save_due(b, stage))
            if not skip:
                self.optimizer.step()
                st.nonfinite_streak = 0
            self.scheduler.step()
            sums = st.epoch_sums  # this rank's share; summed over ranks at the epoch end
            if not skip:  # a skipped batch counts in neither the epoch's loss nor its accuracy
                sums[0] += loss.detach() * len(mine)
                if logits is not None:
                    sums[1] += (logits.argmax(1) == y).sum()
                sums[2] += len(mine)
            st.batch = b + 1
            st.global_step += 1
            st.stage_steps += 1
            st.stage_samples += m
            cost = (self.step_flops + (self.prefix_flops if self.cache is None else 0.0)) * m
            st.flops += cost
            st.stage_flops += cost
            self.reporter.step(f"epoch {st.epoch + 1}/{stage.epochs}")
            if self.plan.flop_budget is not None and st.flops >= self.plan.flop_budget:
                st.stage_stop = st.run_stop = StopReason.BUDGET.value
            elif stage.max_flops is not None and st.stage_flops >= stage.max_flops:
                st.stage_stop = StopReason.STAGE_BUDGET.value
            stop = self.stop_flag.get("signal") if self.world == 1 else self._agreed_stop
            if stop or (every and st.global_step % every == 0):
                elapsed = time.perf_counter() - start
                st.seconds += elapsed
                st.stage_seconds += elapsed
                start = time.perf_counter()
                self._save_last(k, stage)
                if stop:
                    raise StopRequested(self.stop_flag.get("signal") or "a signal to another rank")
            if st.stage_stop is not None:
                break
        elapsed = time.perf_counter() - start
        st.seconds += elapsed
        st.stage_seconds += elapsed

    def _noise(self, step: int) -> contextlib.AbstractContextManager[Any]:
        """Under torchrun each rank draws its own training noise (dropout, masks, CD-k samples)
        from RNGs seeded by (seed, step, rank) -- a function of the step, so resume stays exact
        -- and the run's RNG streams outside the step are left as one process leaves them."""
        if self.world == 1:
            return contextlib.nullcontext()
        return distributed.rank_rng((self.cfg.seed * 1_000_003 + step) * 1_009 + distributed.rank(), self.device)

    def _agree_step(self, loss: torch.Tensor, check_loss: bool) -> torch.Tensor:
        """Under torchrun, one small CPU all-reduce per step so that every rank acts alike:
        a signal that reached any rank stops all of them at this step, and a non-finite loss
        on any rank is made non-finite on every rank (each then takes the same decision,
        instead of one leaving while the others wait in backward's all-reduce)."""
        bad, self._agreed_stop = distributed.any_rank(
            check_loss and not math.isfinite(loss.item()), bool(self.stop_flag.get("signal")))
        return loss * float("nan") if bad else loss

    def _save_due(self, b: int, stage: Stage) -> bool:
        """Whether a checkpoint may be written after this batch (the batched check looks then)."""
        st, every = self.state, self.cfg.checkpoint.every_steps
        return (b == self.steps_per_epoch - 1 or bool(every and (st.global_step + 1) % every == 0)
                or bool(self.stop_flag.get("signal")) or self.world > 1
                or self.plan.flop_budget is not None or stage.max_flops is not None
                or (st.global_step + 1) % NONFINITE_LOOK_EVERY == 0)

    def _nonfinite_grads(self, k: int, stage: Stage, loss: torch.Tensor, exact: bool, look: bool) -> bool:
        """After backward: True when this batch's step is to be skipped (skip_batch); raises
        for stop. ``exact`` (CPU, skip_batch): decided now, before the optimizer steps. Else
        (GPU, stop) a device-side flag collects non-finite losses and gradients without a
        sync and is read whenever a checkpoint may follow (``look``), so no post-NaN state
        is ever saved."""
        grads = [p.grad for g in self.optimizer.param_groups for p in g["params"] if p.grad is not None]
        # a sum is non-finite iff some element is (NaN and inf propagate; finite gradients would
        # have to total ~3e38 to overflow); 14x cheaper on CPU than torch._foreach_norm(inf)
        bad = ~torch.isfinite(torch.stack([g.sum() for g in grads]).sum()) if grads else None
        if exact:
            return bool(bad) and self._nonfinite(k, stage, "gradient")
        flag = ~torch.isfinite(loss.detach()) if bad is None else bad | ~torch.isfinite(loss.detach())
        self._nonfinite_flag = flag if getattr(self, "_nonfinite_flag", None) is None else self._nonfinite_flag | flag
        if look:
            seen, self._nonfinite_flag = bool(self._nonfinite_flag), None
            if seen:
                self._nonfinite(k, stage, f"loss or gradient (checked every {NONFINITE_LOOK_EVERY} steps on "
                                f"{self.device.type}, so at or before)")
        return False

    def _nonfinite(self, k: int, stage: Stage, what: str | None = None) -> bool:
        """train.on_nonfinite=stop: raise. skip_batch: count and log the skipped batch and
        return True, unless NONFINITE_MAX_IN_A_ROW batches in a row were skipped: raise.
        ``what=None`` (the epoch's summed loss) always raises."""
        st = self.state
        where = f"in stage {k + 1} ({stage.name}) at global step {st.global_step + 1}"
        if what is None:
            what, where = "loss summed over the epoch", f"in stage {k + 1} ({stage.name}) by global step {st.global_step}"
        elif self.cfg.train.on_nonfinite == "skip_batch":
            st.skipped_batches += 1
            st.nonfinite_streak += 1
            self._log({"event": "skipped_batch", "stage": k + 1, "stage_name": stage.name,
                       "epoch": st.epoch + 1, "step": st.global_step + 1, "nonfinite": what.split()[0],
                       "skipped_batches": st.skipped_batches, "in_a_row": st.nonfinite_streak})
            if st.nonfinite_streak < NONFINITE_MAX_IN_A_ROW:
                log.warning("Non-finite %s %s: batch skipped (train.on_nonfinite=skip_batch).", what, where)
                return True
            raise StagetrainError(
                f"{st.nonfinite_streak} batches in a row gave a non-finite loss or gradient and were "
                f"skipped (train.on_nonfinite=skip_batch allows {NONFINITE_MAX_IN_A_ROW - 1}); the run "
                f"stopped {where}, LR {stage.lr:g}. The last good checkpoint is kept unchanged. Try a "
                "lower learning rate (optim.lr or the strategy's lr).")
        raise StagetrainError(
            f"The training {what} became non-finite (NaN or inf) {where}, LR {stage.lr:g}. The run "
            "stopped before that step changed the weights; the last good checkpoint is kept "
            "unchanged. Try a lower learning rate (optim.lr or the strategy's lr), or "
            "train.on_nonfinite=skip_batch to skip such batches."
        )

    def _end_epoch(self, k: int, stage: Stage) -> None:
        st = self.state
        sums = distributed.all_sum(st.epoch_sums) if self.world > 1 else st.epoch_sums
        loss_sum, correct, n = (float(v) for v in sums)
        if not math.isfinite(loss_sum):
            self._nonfinite(k, stage)
        train = {"loss": loss_sum / max(n, 1)}
        if stage.objective == "supervised":
            train["acc"] = correct / max(n, 1)
        val = self.evaluate(stage, "val")
        lr = self.optimizer.param_groups[-1]["lr"]
        base = {"stage": k + 1, "stage_name": stage.name, "epoch": st.epoch + 1,
                "step": st.global_step, "flops": st.flops, "time": round(st.seconds, 4)}
        self._log({**base, "split": "train", "lr": lr, **train})
        self._log({**base, "split": "val", **val})
        st.stage_metrics = {f"train/{k_}": v for k_, v in train.items()}
        st.stage_metrics.update({f"val/{k_}": v for k_, v in val.items()})
        score = val["acc"] if "acc" in val else -val["loss"]
        if st.stage_best is None or score > st.stage_best:
            st.stage_best, st.bad_epochs = score, 0
            st.stage_best_metrics = dict(st.stage_metrics)
        else:
            st.bad_epochs += 1
        is_best = stage.uses_head and (st.best is None or val["acc"] > st.best)
        if is_best:
            st.best = val["acc"]
        st.epoch += 1
        st.batch = 0
        st.epoch_sums = [0.0, 0.0, 0.0]
        patience = stage.patience or self.cfg.train.patience
        if st.stage_stop is not None:
            pass  # a budget stopped the epoch early
        elif self.plan.target and stage.uses_head and target_met(self.plan.target, st.stage_metrics):
            st.stage_stop = st.run_stop = StopReason.TARGET.value
        elif st.epoch >= stage.epochs:
            st.stage_stop = StopReason.EPOCHS.value
        elif patience and st.bad_epochs >= patience:
            st.stage_stop = StopReason.PATIENCE.value
        self.reporter.epoch_end(
            f"stage {k + 1} {stage.name} epoch {st.epoch}/{stage.epochs}: "
            + " ".join(f"{key}={val_:.4f}" for key, val_ in st.stage_metrics.items()))
        self._save_last(k, stage)
        if is_best and self.rundir is not None:
            ckpt.save(self._checkpoint_state(k, stage), self.rundir.best)
        if self.on_update is not None:
            self.on_update(self)

    def _end_stage(self, k: int, stage: Stage) -> None:
        st = self.state
        if stage.helper_to_head and self.helper is not None:
            self.model.head.layer.load_state_dict(self.helper.layer.state_dict())
        reason = StopReason(st.stage_stop or StopReason.EPOCHS.value)
        lam = self.plan.complexity_penalty
        score = None
        if lam is not None and stage.uses_head and "val/loss" in st.stage_metrics:
            score = st.stage_metrics["val/loss"] + lam * count_parameters(self.model)
            if st.prev_score is not None and score >= st.prev_score and st.run_stop is None:
                st.run_stop = StopReason.COMPLEXITY.value
            st.prev_score = score if st.prev_score is None else min(score, st.prev_score)
        st.prev_optim = (optimizer_state_by_name(self.optimizer, self.model)
                         if self.plan.optimizer_state == "map" else {})
        st.summaries.append({
            "stage": k + 1, "name": stage.name, "objective": stage.objective,
            "trainable": list(stage.trainable), "epochs": st.epoch, "steps": st.stage_steps,
            "samples": st.stage_samples, "flops": st.stage_flops, "seconds": round(st.stage_seconds, 3),
            "params": count_parameters(self.model), "cache": self.cache_note,
            "final": dict(st.stage_metrics), "best": dict(st.stage_best_metrics),
            "stop_reason": reason.value, "stop_message": reason.message, "complexity_score": score,
        })
        self._log({"event": "stage_end", "stage": k + 1, "stage_name": stage.name,
                   "stop_reason": reason.value, "flops": st.flops, "time": round(st.seconds, 4)})
        self.helper, self.cache, self.optimizer, self.scheduler, self.step = None, None, None, None, None
        st.stage, st.epoch, st.batch, st.in_stage = k + 1, 0, 0, False
        st.stage_best, st.bad_epochs, st.stage_stop = None, 0, None
        st.stage_steps = st.stage_samples = 0
        st.stage_flops = st.stage_seconds = 0.0
        st.stage_metrics, st.stage_best_metrics = {}, {}
        if self.rundir is not None:
            state = self._checkpoint_state(k + 1, None)
            if self.cfg.checkpoint.stage_checkpoints:
                ckpt.save(state, self.rundir.stage_checkpoint(k, stage.name))
            ckpt.save(state, self.rundir.last, keep_previous=self.rundir.last_prev)

    # ----------------------------------------------------------------- eval
    @torch.no_grad()
    def evaluate(self, stage: Stage | None, split: str, limit: int | None = None) -> dict[str, float]:
        """Loss (and accuracy for supervised stages) of the stage's path on a split.

        ``stage=None`` evaluates the model itself (blocks + head).
        """
        bundle = self.data if stage is None else self.datasets[stage.dataset]
        data = getattr(bundle, split)
        if limit is not None:
            data = data.subset(torch.arange(min(limit, len(data)), device=data.y.device))
        if self.world > 1:  # each rank evaluates its slice; the sums are all-reduced below
            lo, hi = distributed.shard_range(len(data))
            data = Split(data.x[lo:hi], data.y[lo:hi])
        stage = stage or Stage(name="final", epochs=0, trainable=[])
        self.model.eval()
        if self.helper is not None:
            self.helper.eval()
        prefix = prefix_len(self.model, stage) if stage.trainable else 0
        loss_sum, correct, n = 0.0, 0, 0
        for i in range(0, len(data), self.cfg.train.eval_batch_size):
            x = bundle.normalize(data.x[i:i + self.cfg.train.eval_batch_size], self.plan.input_norm)
            y = data.y[i:i + self.cfg.train.eval_batch_size]
            with torch.autocast(self.device.type, torch.bfloat16, enabled=self.autocast):
                h = self.model.features(x, 0, prefix)
                loss, logits = stage_loss(stage, self.model, self.helper if stage.trainable else None,
                                          h, y, prefix, False)
            loss_sum += float(loss) * len(y)
            if logits is not None:
                correct += int((logits.argmax(1) == y).sum())
            n += len(y)
        if self.world > 1:
            loss_sum, correct, n = distributed.all_sum([loss_sum, correct, n])
        if stage.trainable:
            self._set_train_mode(stage)
        out = {"loss": loss_sum / n}
        if stage.objective == "supervised":
            out["acc"] = correct / n
        return out

    def _finish(self) -> dict[str, Any]:
        g = torch.Generator().manual_seed(self.cfg.seed)
        for op in self.plan.final_ops:  # e.g. merge LoRA adapters into the weights
            self.model, _ = apply_op(self.model, op, g)
        final = {}
        for split in ("val", "test"):
            for key, value in self.evaluate(None, split).items():
                final[f"{split}/{key}"] = value
        self._log({"event": "final", "step": self.state.global_step, "flops": self.state.flops,
                   "time": round(self.state.seconds, 4), **final})
        return final

    # ----------------------------------------------------------------- I/O
    def _log(self, event: dict[str, Any]) -> None:
        if self.metrics is not None and self.metrics.log(event):
            for sink in self.sinks:  # e.g. TensorBoard; sees each event once, as the file does
                sink(event)

    def _checkpoint_state(self, k: int, stage: Stage | None) -> dict[str, Any]:
        """Everything needed to continue exactly from here (stage=None: stage k not entered)."""
        in_stage = stage is not None
        groups = self.optimizer.param_groups if in_stage else []
        return {
            "format": ckpt.FORMAT, "version": ckpt.FORMAT_VERSION,
            "arch": self.model.spec,
            "model": self.model.state_dict(),
            "helper": self.helper.state_dict() if in_stage and self.helper is not None else None,
            "optimizer": self.optimizer.state_dict() if in_stage else None,
            "scheduler": self.scheduler.state_dict() if in_stage else None,
            "position": {"stage": k, "stage_name": stage.name if stage else None,
                         "epoch": self.state.epoch, "batch": self.state.batch,
                         "global_step": self.state.global_step},
            "run_state": asdict(self.state),
            "rng": ckpt.rng_state(),
            "config_yaml": self.config_yaml,
            "trainable": list(stage.trainable) if stage else [],
            "param_groups": [{"name": g.get("name"), "lr": g["lr"]} for g in groups],
            "metrics_lines": self.metrics.position if self.metrics is not None else 0,
        }

    def _save_last(self, k: int, stage: Stage) -> None:
        sums = self.state.epoch_sums
        if self.world > 1:  # every rank joins; rank 0 saves the global sums
            sums = distributed.all_sum(sums)
        if self.rundir is None:
            return
        state = self._checkpoint_state(k, stage)
        state["run_state"]["epoch_sums"] = [float(v) for v in sums]
        ckpt.save(state, self.rundir.last, keep_previous=self.rundir.last_prev)
