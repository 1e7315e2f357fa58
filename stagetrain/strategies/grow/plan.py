"""grow: start with a small model, train, grow at each trigger, keep training.

The schedule is a list of per-stage block widths (``strategy.widths``; a longer list adds
blocks on top) and/or data fractions. Stage k > 0 starts with growth ops (widen /
deepen) that the engine applies; Net2Net operators keep the function unchanged, so the
loss right after growth equals the loss right before (logged as a ``growth`` event).
``strategy.deepen=insert`` is ``residual_zero`` under its user-facing name: zero-output
(identity) layers added on top of the stack, function-preserving.
Triggers: fixed epochs per stage, a validation plateau, or a share of the FLOP budget.
Run-level stops: ``target``, ``flop_budget``, ``complexity_penalty``.
"""

from __future__ import annotations

from typing import Any

from stagetrain.core.errors import StagetrainError
from stagetrain.core.plan import Plan, Stage
from stagetrain.core.spec import ModelSpec, as_spec
from stagetrain.families import build_spec, family
from stagetrain.growth.ops import stack_problem
from stagetrain.nn.modelops import Deepen, ModelOp, Stack, Widen
from stagetrain.strategies.common import stage_from_cfg
from stagetrain.strategies.grow.config import GrowStage, schedule


def initial_spec(cfg: Any, in_shape: tuple[int, ...], num_classes: int) -> dict[str, Any]:
    """The architecture of the first stage."""
    first = schedule(cfg)[0]
    return build_spec(family(cfg.model.name).with_grow_widths(cfg.model, first), in_shape, num_classes)


def final_spec(cfg: Any, in_shape: tuple[int, ...], num_classes: int) -> dict[str, Any]:
    """The architecture of the last stage (the largest): checked by the preflight."""
    last = schedule(cfg)[-1]
    return build_spec(family(cfg.model.name).with_grow_widths(cfg.model, last), in_shape, num_classes)


def _ops(prev: list[int], cur: list[int], s: Any) -> list[ModelOp]:
    method = "net2net" if s.op == "net2net" else "random"
    ops: list[ModelOp] = []
    for i, (p, c) in enumerate(zip(prev, cur, strict=False)):
        if c > p:
            ops.append(Widen(f"block{i + 1}", c, method, float(s.noise)))
    if s.deepen == "stack" and len(cur) > len(prev) and s.op != "random":
        return ops + [Stack()]
    for i in range(len(prev), len(cur)):
        kind = "random" if s.op == "random" else "residual_zero" if s.deepen == "insert" else s.deepen
        ops.append(Deepen(f"block{i}", kind))
        if cur[i] > cur[i - 1]:
            ops.append(Widen(f"block{i + 1}", cur[i], method, float(s.noise)))
    return ops


def build(cfg: Any, spec: ModelSpec | dict[str, Any]) -> Plan:
    s = cfg.strategy
    spec = as_spec(spec)
    widths = schedule(cfg)
    if s.deepen == "stack" and s.op != "random" and any(len(b) > len(a) for a, b in zip(widths, widths[1:], strict=False)):
        problem = stack_problem(spec)
        if problem:
            raise StagetrainError(problem)
    fractions = list(s.data_fractions or [1.0])
    shares = list(s.flops_shares or [1.0 / len(widths)] * len(widths))
    stages: list[Stage] = []
    for k, w in enumerate(widths):
        last = k == len(widths) - 1
        epochs: int | None = int((s.final_epochs or cfg.train.epochs) if last else s.epochs_per_stage)
        trigger: dict[str, Any] = {}
        if s.trigger == "plateau" and not last:
            trigger["patience"] = int(s.plateau_patience)
        if s.trigger == "flops_share":  # the stage's FLOP share bounds it; its schedule spans that share
            trigger["max_flops"] = float(s.flop_budget) * shares[min(k, len(shares) - 1)]
            epochs = None
        fraction = float(fractions[min(k, len(fractions) - 1)])
        stages.append(stage_from_cfg(
            cfg, name=f"grow-{k + 1}", epochs=epochs,
            trainable=(["stem"] if spec.stem is not None else []) + [f"block{i + 1}" for i in range(len(w))] + ["head"],
            ops=_ops(widths[k - 1], w, s) if k else [], extra=GrowStage(data_fraction=fraction),
            lr=float(cfg.optim.lr) * (float(s.lr_after_growth) if k else 1.0),
            description=f"widths {w}, {fraction:.0%} of the data", **trigger,
        ))
    return Plan("grow", stages, target=s.target, flop_budget=s.flop_budget,
                complexity_penalty=s.complexity_penalty, optimizer_state=s.optimizer_state)
