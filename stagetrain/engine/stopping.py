"""Stop rules: when a stage (or the whole run) ends, and the reason it records."""

from __future__ import annotations

from stagetrain.core.plan import Plan, Stage, StopReason, target_met
from stagetrain.engine.state import RunState


def after_step(plan: Plan, stage: Stage, st: RunState) -> None:
    """Compute budgets, checked after every optimizer step (overshoot: at most one step)."""
    if plan.flop_budget is not None and st.flops >= plan.flop_budget:
        st.cur.stop = st.run_stop = StopReason.BUDGET.value
    elif stage.max_flops is not None and st.cur.flops >= stage.max_flops:
        st.cur.stop = StopReason.STAGE_BUDGET.value


def after_epoch(plan: Plan, stage: Stage, st: RunState, epochs: int, default_patience: int | None) -> None:
    """Target, epochs and patience, checked after each epoch's validation (a budget that
    already stopped the stage inside the epoch keeps its reason). ``epochs``: the stage's
    planned epochs (for a FLOP-bounded stage, what its budget buys)."""
    patience = stage.patience or default_patience
    cur = st.cur
    plateau(stage, st)
    if cur.stop is not None:
        return
    if plan.target and stage.uses_head and target_met(plan.target, cur.metrics):
        cur.stop = st.run_stop = StopReason.TARGET.value
    elif cur.epoch >= epochs:
        cur.stop = (StopReason.EPOCHS if stage.epochs is not None else StopReason.STAGE_BUDGET).value
    elif patience and cur.bad_epochs >= patience:
        cur.stop = StopReason.PATIENCE.value
    elif stage.auto and cur.plateau_bad >= int(stage.auto["patience"]):
        cur.stop = StopReason.PLATEAU.value


def plateau(stage: Stage, st: RunState) -> None:
    """``epochs=auto`` (``stage.auto``): count the epochs since the stage's validation loss (its
    training loss without a validation split) last fell by more than ``min_delta`` relative to
    the best so far; ``after_epoch`` stops the stage after ``patience`` of them."""
    cur = st.cur
    loss = cur.metrics.get("val/loss", cur.metrics.get("train/loss"))
    if not stage.auto or loss is None:
        return
    if cur.plateau_best is None or loss < cur.plateau_best - float(stage.auto["min_delta"]) * abs(cur.plateau_best):
        cur.plateau_best, cur.plateau_bad = float(loss), 0
    else:
        cur.plateau_bad += 1


def update_best(st: RunState, val: dict[str, float]) -> None:
    """Track the stage's best validation score (accuracy, or -loss) for patience."""
    score = val["acc"] if "acc" in val else -val["loss"]
    cur = st.cur
    if cur.best is None or score > cur.best:
        cur.best, cur.bad_epochs = score, 0
        cur.best_metrics = dict(cur.metrics)
    else:
        cur.bad_epochs += 1


def complexity(plan: Plan, stage: Stage, st: RunState, params: int) -> float | None:
    """The stage's val loss + lambda * parameters (``plan.complexity_penalty``); the run
    stops (``complexity``) when it stops improving. None when no penalty applies."""
    lam = plan.complexity_penalty
    if lam is None or not stage.uses_head or "val/loss" not in st.cur.metrics:
        return None
    score = st.cur.metrics["val/loss"] + lam * params
    if st.prev_score is not None and score >= st.prev_score and st.run_stop is None:
        st.run_stop = StopReason.COMPLEXITY.value
    st.prev_score = score if st.prev_score is None else min(score, st.prev_score)
    return score


def take_best(stage: Stage, st: RunState, val: dict[str, float]) -> bool:
    """Whether this epoch's model is the run's best so far (then recorded as such): the highest
    validation accuracy, or for a language model the lowest validation loss."""
    score = val["acc"] if "acc" in val else -val["loss"]
    if stage.uses_head and (st.best is None or score > st.best):
        st.best = score
        return True
    return False
