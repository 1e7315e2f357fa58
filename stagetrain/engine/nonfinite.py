"""Non-finite losses and gradients: stop the run before a NaN reaches the weights, or skip
the batch (``train.on_nonfinite``).

On the CPU (or with skip_batch) every step is checked before the optimizer steps. On a
GPU with ``stop`` a device-side flag collects non-finite losses and gradients without a
sync and is read whenever a checkpoint may follow, so no post-NaN state is ever saved.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch

from stagetrain.core.errors import StagetrainError
from stagetrain.core.plan import Stage
from stagetrain.engine.state import RunState

log = logging.getLogger("stagetrain")
NONFINITE_MAX_IN_A_ROW = 10  # train.on_nonfinite=skip_batch stops at this many skipped batches in a row
NONFINITE_LOOK_EVERY = 100  # GPU, on_nonfinite=stop: steps between reads of the non-finite flag (at most)


def checkpoint_may_follow(last_batch: bool, step: int, every_steps: int, always: bool) -> bool:
    """Whether a checkpoint may be written after optimizer step ``step`` (1-based): the
    batched check must look before then. ``always``: a signal, a FLOP budget or torchrun
    may end the stage at any step."""
    return (last_batch or always or bool(every_steps and step % every_steps == 0)
            or step % NONFINITE_LOOK_EVERY == 0)


class NonFiniteGuard:
    def __init__(self, policy: str, device_type: str, state: RunState, log_event: Callable[[dict[str, Any]], None]):
        self.policy, self.device_type, self.state, self.log_event = policy, device_type, state, log_event
        self.exact = device_type == "cpu" or policy == "skip_batch"  # decide per step, before it changes weights
        self._flag: torch.Tensor | None = None
        self.params: list[torch.Tensor] = []

    def grads(self, k: int, stage: Stage, optimizer: torch.optim.Optimizer, loss: torch.Tensor, look: bool) -> bool:
        """After backward: True when this batch's step is to be skipped (skip_batch); raises for stop.
        Batched mode (not ``exact``) reads its flag only when ``look`` (a checkpoint may follow)."""
        self.params = [p for g in optimizer.param_groups for p in g["params"]]  # for the diagnosis
        grads = [p.grad for p in self.params if p.grad is not None]
        # a sum is non-finite iff some element is (NaN and inf propagate; finite gradients would
        # have to total ~3e38 to overflow); 14x cheaper on CPU than torch._foreach_norm(inf)
        bad = ~torch.isfinite(torch.stack([g.sum() for g in grads]).sum()) if grads else None
        if self.exact:
            return bool(bad) and self.found(k, stage, "gradient")
        flag = ~torch.isfinite(loss.detach()) if bad is None else bad | ~torch.isfinite(loss.detach())
        self._flag = flag if self._flag is None else self._flag | flag
        if look:
            seen, self._flag = bool(self._flag), None
            if seen:
                self.found(k, stage, f"loss or gradient (checked every {NONFINITE_LOOK_EVERY} steps on "
                           f"{self.device_type}, so at or before)")
        return False

    def found(self, k: int, stage: Stage, what: str | None = None, batch: torch.Tensor | None = None) -> bool:
        """stop: raise. skip_batch: count and log the skipped batch and return True, unless
        NONFINITE_MAX_IN_A_ROW batches in a row were skipped: raise. ``what=None`` (the
        epoch's summed loss) always raises."""
        st = self.state
        where = f"in stage {k + 1} ({stage.name}) at global step {st.global_step + 1}"
        if what is None:
            what, where = "loss summed over the epoch", f"in stage {k + 1} ({stage.name}) by global step {st.global_step}"
        elif self.policy == "skip_batch":
            st.skipped_batches += 1
            st.nonfinite_streak += 1
            self.log_event({"event": "skipped_batch", "stage": k + 1, "stage_name": stage.name,
                            "epoch": st.cur.epoch + 1, "step": st.global_step + 1, "nonfinite": what.split()[0],
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
            f"The training {what} became non-finite (NaN or inf) {where}, LR {stage.lr:g}. "
            f"{self.diagnosis(what, batch)} The run stopped before that step changed the weights; the last "
            "good checkpoint is kept unchanged."
        )

    def diagnosis(self, what: str, batch: torch.Tensor | None = None) -> str:
        """The first non-finite thing found, before the learning rate is suspected: the stage's
        input batch, weights that already held NaN/inf (a source's, or a previous step's), else
        the gradient overflowing while the loss was finite, else the loss itself."""
        if batch is not None and batch.is_floating_point() and not bool(torch.isfinite(batch).all()):
            bad = int((~torch.isfinite(batch)).sum())
            return (f"First non-finite thing found: the stage's input batch ({bad} of its {batch.numel()} values "
                    "are NaN/inf): the data (or the frozen blocks' features of it), not the optimisation. Check "
                    "the dataset's files or the arrays given to it. A lower learning rate will not help with that.")
        for i, p in enumerate(self.params):
            if not bool(torch.isfinite(p.detach()).all()):
                at_start = self.state.global_step == 0
                return (f"First non-finite thing found: the weights (parameter {i}, shape {list(p.shape)}) "
                        + ("already held NaN/inf before the first step: check the source weights "
                           "(strategy.source) or the initialisation." if at_start else
                           "held NaN/inf before this step.") + " A lower learning rate will not help with that.")
        if what.startswith("gradient"):
            return ("First non-finite thing found: a gradient, while the loss and the weights were finite "
                    "(an overflow in backward). Try a lower learning rate (optim.lr or the strategy's lr), "
                    "device.precision=fp32, or train.on_nonfinite=skip_batch to skip such batches.")
        return ("The weights were finite, so the loss diverged on this batch: try a lower learning rate "
                "(optim.lr or the strategy's lr), or train.on_nonfinite=skip_batch to skip such batches.")
