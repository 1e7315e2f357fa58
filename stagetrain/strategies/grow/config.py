"""grow's options, the growth schedule they describe, and their checks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from stagetrain.core.errors import StagetrainError, check_choice
from stagetrain.core.plan import TARGET_KEYS, StageExtra, parse_target
from stagetrain.core.schema import StrategyConfig, as_list
from stagetrain.families import grow_schedule, grow_widths, is_lm, scaled_schedule


@dataclass
class GrowStage(StageExtra, kind="grow"):
    """grow's own settings of one stage (``Stage.extra``; run.json ``{"kind": "grow", ...}``):
    the leading fraction of a fixed seeded order of the training data it uses
    (``strategy.data_fractions``; the engine's ``stage_indices``)."""

    data_fraction: float = 1.0


@dataclass
class Config(StrategyConfig):
    name: str = "grow"
    widths: Any = None  # null: the model family's default schedule (families.grow_schedule)
    width_factor: float | None = None
    stages: int | None = None
    depths: list[int] | None = None
    data_fractions: list[float] | None = None
    trigger: str = "epochs"
    epochs_per_stage: int = 5
    final_epochs: int | None = None  # null: train.epochs
    plateau_patience: int = 2
    flops_shares: list[float] | None = None
    op: str = "net2net"
    noise: float = 0.0
    deepen: str = "identity"
    target: str | None = None
    flop_budget: float | None = None
    max_stages: int | None = None
    complexity_penalty: float | None = None
    optimizer_state: str = "reset"
    lr_after_growth: float = 1.0


def schedule(cfg: Any) -> list[list[int]]:
    """Per-stage block widths, from widths / width_factor+stages / the family's default, then
    depths, cut at max_stages."""
    s = cfg.strategy
    final = grow_widths(cfg.model)
    if s.width_factor is not None:
        widths = scaled_schedule(final, s.width_factor, int(s.stages or 3))
    elif s.widths is None:
        widths = grow_schedule(cfg.model)
    else:
        widths = [[int(w) for w in as_list(stage)] for stage in as_list(s.widths)]
    n = max(len(widths), len(s.depths or []), len(s.data_fractions or []))
    widths += [widths[-1]] * (n - len(widths))
    if s.depths:
        depths = list(s.depths) + [s.depths[-1]] * (n - len(s.depths))
        widths = [(w + [w[-1]] * (d - len(w)))[:max(d, 1)] for w, d in zip(widths, depths, strict=False)]
    if s.max_stages:
        widths = widths[: s.max_stages]
    return widths


def validate(cfg: Any) -> None:
    s = cfg.strategy
    check_choice("strategy.trigger", s.trigger, ("epochs", "plateau", "flops_share"))
    check_choice("strategy.op", s.op, ("net2net", "random"))
    check_choice("strategy.deepen", s.deepen, ("identity", "residual_zero", "insert", "stack"))
    check_choice("strategy.optimizer_state", s.optimizer_state, ("reset", "map"))
    for key in ("epochs_per_stage", "final_epochs", "plateau_patience", "flop_budget", "max_stages",
                "lr_after_growth", "width_factor", "stages"):
        value = getattr(s, key)
        if value is not None and not value > 0:
            raise StagetrainError(f"strategy.{key}={value} is out of range: it must be > 0.")
    if s.noise < 0 or (s.complexity_penalty is not None and s.complexity_penalty < 0):
        raise StagetrainError("strategy.noise and strategy.complexity_penalty must be >= 0.")
    if s.target is not None:
        try:
            parse_target(s.target)
        except ValueError:
            raise StagetrainError(
                f"strategy.target={s.target!r} is not valid: write it as <metric><op><value>, "
                f"e.g. 'val/acc>=0.97', 'val/loss<=0.1' or (language models) 'val/ppl<=20'; metrics: "
                f"{', '.join(TARGET_KEYS)}.") from None
        _check_target_metric(s.target, cfg.model)
    if s.trigger == "flops_share" and s.flop_budget is None:
        raise StagetrainError("strategy.trigger=flops_share needs strategy.flop_budget (total training FLOPs).")
    for f in s.data_fractions or []:
        if not 0 < f <= 1:
            raise StagetrainError(f"strategy.data_fractions={list(s.data_fractions)} is not valid: each must be in (0, 1].")
    try:
        widths = schedule(cfg)
    except (TypeError, ValueError):
        raise StagetrainError(
            f"strategy.widths={s.widths} is not valid: give one list of widths per stage, e.g. [[16],[64],[256]].") from None
    if not widths or any(not w or min(w) <= 0 for w in widths):
        raise StagetrainError(f"strategy.widths={s.widths} is not valid: every stage needs positive widths.")
    for k in range(1, len(widths)):
        prev, cur = widths[k - 1], widths[k]
        if len(cur) < len(prev) or any(c < p for c, p in zip(cur, prev, strict=False)):
            raise StagetrainError(
                f"strategy.widths: stage {k + 1} {cur} is smaller than stage {k} {prev}; growth never shrinks.")
        deepens = len(cur) > len(prev)
        act = getattr(cfg.model, "activation", "relu")
        if deepens and s.op == "net2net" and s.deepen == "identity" and act != "relu":
            raise StagetrainError(
                f"strategy.deepen=identity is exact only for ReLU blocks, but model.activation={act}. "
                "Use strategy.deepen=residual_zero (exact for any activation) or strategy.op=random.")
        if deepens and s.deepen == "stack" and (len(cur) != 2 * len(prev) or cur != prev + prev):
            raise StagetrainError(
                f"strategy.deepen=stack copies the whole stack on top of itself, so a deepening stage must list "
                f"the previous widths twice; stage {k + 1} {cur} after {prev} does not (e.g. [[64,64],[64,64,64,64]]).")
        if deepens and s.deepen in ("residual_zero", "insert"):
            fixed = range(len(prev) - 1, len(cur))  # the block below and the residual blocks
            later_widened = any(later[i] > cur[i] for later in widths[k + 1:] for i in fixed)
            if later_widened or any(cur[i] != cur[len(prev) - 1] for i in fixed):
                raise StagetrainError(
                    f"strategy.deepen={s.deepen}: a residual block keeps the width of the block below it, "
                    "and neither can be widened later; reach the final widths before adding blocks.")


def _check_target_metric(target: str, model: Any) -> None:
    """A target on a metric the run never reports would never stop it: refuse it."""
    key = parse_target(target)[0]
    lm = is_lm(model)
    if key.endswith("/loss") or key.endswith(("/ppl", "/bpb")) == lm:
        return
    what, have = ("a language model (model.head=lm)", "loss, ppl, bpb") if lm else ("a classifier", "loss, acc")
    raise StagetrainError(f"strategy.target={target!r} names {key}, which {what} does not report (it reports "
                          f"{have}), so the target would never stop the run. E.g. "
                          f"{'val/ppl<=20' if lm else 'val/acc>=0.97'}.")
