"""grow: start with a small model, train, grow at each trigger, keep training.

The schedule is a list of per-stage block widths (``strategy.widths``; a longer list adds
blocks on top) and/or data fractions. Stage k > 0 starts with growth ops (widen /
deepen) that the engine applies; Net2Net operators keep the function unchanged, so the
loss right after growth equals the loss right before (logged as a ``growth`` event).
Triggers: fixed epochs per stage, a validation plateau, or a share of the FLOP budget.
Run-level stops: ``target``, ``flop_budget``, ``complexity_penalty``.
"""

from __future__ import annotations

from typing import Any

from stagetrain.config import as_list
from stagetrain.errors import StagetrainError, check_choice
from stagetrain.models import build_spec
from stagetrain.plan import Plan, Stage, parse_target
from stagetrain.strategies.common import stage_from_cfg


def schedule(cfg: Any) -> list[list[int]]:
    """Per-stage block widths, from widths / width_factor+stages / depths, cut at max_stages."""
    s = cfg.strategy
    final = list(cfg.model.widths if cfg.model.name == "mlp" else cfg.model.channels)
    if s.width_factor is not None:
        n = int(s.stages or 3)
        widths = [[max(1, round(w / s.width_factor ** (n - 1 - k))) for w in final] for k in range(n)]
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
    check_choice("strategy.deepen", s.deepen, ("identity", "residual_zero"))
    check_choice("strategy.optimizer_state", s.optimizer_state, ("reset", "map"))
    for key in ("epochs_per_stage", "final_epochs", "plateau_patience", "flop_budget", "max_stages",
                "lr_after_growth", "width_factor", "stages"):
        value = s[key]
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
                "e.g. 'val/acc>=0.97' or 'val/loss<=0.1'; metrics: val/acc, val/loss, train/acc, train/loss.") from None
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
        if deepens and s.op == "net2net" and s.deepen == "identity" and cfg.model.activation != "relu":
            raise StagetrainError(
                f"strategy.deepen=identity is exact only for ReLU blocks, but model.activation={cfg.model.activation}. "
                "Use strategy.deepen=residual_zero (exact for any activation) or strategy.op=random.")
        if deepens and s.deepen == "residual_zero":
            fixed = range(len(prev) - 1, len(cur))  # the block below and the residual blocks
            later_widened = any(later[i] > cur[i] for later in widths[k + 1:] for i in fixed)
            if later_widened or any(cur[i] != cur[len(prev) - 1] for i in fixed):
                raise StagetrainError(
                    "strategy.deepen=residual_zero: a residual block keeps the width of the block below it, "
                    "and neither can be widened later; reach the final widths before adding blocks.")


def initial_spec(cfg: Any, in_shape: tuple[int, ...], num_classes: int) -> dict[str, Any]:
    """The architecture of the first stage."""
    first = schedule(cfg)[0]
    key = "widths" if cfg.model.name == "mlp" else "channels"
    model_cfg = cfg.model.copy()
    model_cfg[key] = first
    return build_spec(model_cfg, in_shape, num_classes)


def _ops(prev: list[int], cur: list[int], s: Any) -> list[dict[str, Any]]:
    method = "net2net" if s.op == "net2net" else "random"
    ops: list[dict[str, Any]] = []
    for i, (p, c) in enumerate(zip(prev, cur, strict=False)):
        if c > p:
            ops.append({"op": "widen", "block": f"block{i + 1}", "width": c, "method": method, "noise": float(s.noise)})
    for i in range(len(prev), len(cur)):
        kind = "random" if s.op == "random" else s.deepen
        ops.append({"op": "deepen", "after": f"block{i}", "kind": kind})
        if cur[i] > cur[i - 1]:
            ops.append({"op": "widen", "block": f"block{i + 1}", "width": cur[i], "method": method,
                        "noise": float(s.noise)})
    return ops


def build(cfg: Any, spec: dict[str, Any]) -> Plan:
    s = cfg.strategy
    widths = schedule(cfg)
    fractions = list(s.data_fractions or [1.0])
    shares = list(s.flops_shares or [1.0 / len(widths)] * len(widths))
    stages: list[Stage] = []
    for k, w in enumerate(widths):
        last = k == len(widths) - 1
        epochs = int((s.final_epochs or cfg.train.epochs) if last else s.epochs_per_stage)
        trigger: dict[str, Any] = {}
        if s.trigger == "plateau" and not last:
            trigger["patience"] = int(s.plateau_patience)
        if s.trigger == "flops_share":
            trigger["max_flops"] = float(s.flop_budget) * shares[min(k, len(shares) - 1)]
            epochs = 10_000  # the stage's FLOP share ends it
        fraction = float(fractions[min(k, len(fractions) - 1)])
        stages.append(stage_from_cfg(
            cfg, name=f"grow-{k + 1}", epochs=epochs,
            trainable=[f"block{i + 1}" for i in range(len(w))] + ["head"],
            ops=_ops(widths[k - 1], w, s) if k else [], data_fraction=fraction,
            lr=float(cfg.optim.lr) * (float(s.lr_after_growth) if k else 1.0),
            description=f"widths {w}, {fraction:.0%} of the data", **trigger,
        ))
    return Plan("grow", stages, target=s.target, flop_budget=s.flop_budget,
                complexity_penalty=s.complexity_penalty, optimizer_state=s.optimizer_state)
