"""Per-stage optimizer (one parameter group per trainable group) and LR schedule.

The schedule is a pure function of the step inside the stage, so it restarts at every
stage and a resumed run reproduces it exactly.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from stagetrain.core.plan import Stage

LBFGS_ITERS = 50  # L-BFGS iterations per step (a full-batch stage takes one step per epoch)
# the forward-backward passes one such step may make: torch's max_eval (5/4 of max_iter) and
# the engine's pass before it and after it (engine/solver.py)
LBFGS_MAX_PASSES = LBFGS_ITERS * 5 // 4 + 2


def param_groups(stage: Stage, groups: dict[str, nn.Module]) -> list[dict[str, Any]]:
    """One optimizer group per group with trainable parameters, LR stage.lr * lr_scale[name]."""
    out = []
    for name, module in groups.items():
        params = [p for p in module.parameters() if p.requires_grad]
        if params:
            out.append({"params": params, "lr": stage.lr * stage.lr_scale.get(name, 1.0), "name": name})
    return out


def build_optimizer(stage: Stage, groups: list[dict[str, Any]], fused: bool = True) -> torch.optim.Optimizer:
    """The stage's optimizer. Adam/AdamW run fused (one kernel per group instead of ~10 per
    parameter) on CPU and CUDA: on the MNIST MLP the optimizer step is 3x faster on CPU,
    about a third of a training step (benchmarks/README.md). Same algorithm; the last bits
    of the weights differ from the unfused loop's (``optim.fused=false``)."""
    params = [p for g in groups for p in g["params"]]
    fast = {"fused": True} if fused and params and params[0].device.type in ("cpu", "cuda") else {}
    if stage.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=stage.lr, momentum=stage.momentum, weight_decay=stage.weight_decay)
    if stage.optimizer == "adam":
        return torch.optim.Adam(groups, lr=stage.lr, weight_decay=stage.weight_decay, **fast)
    if stage.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=stage.lr, weight_decay=stage.weight_decay, **fast)
    if stage.optimizer == "lbfgs":  # full batch (engine/solver.py): one group, a line search instead of an LR
        return torch.optim.LBFGS(params, lr=stage.lr, max_iter=LBFGS_ITERS, history_size=20,
                                 line_search_fn="strong_wolfe", tolerance_grad=1e-9, tolerance_change=1e-12)
    raise ValueError(f"unknown optimizer {stage.optimizer!r}")


def lr_factor(name: str, step: int, total: int, steps_per_epoch: int, warmup_epochs: int,
              step_size: int, gamma: float) -> float:
    """Multiplier of the base LR at ``step`` (0-based) of a stage of ``total`` steps."""
    warmup = warmup_epochs * steps_per_epoch
    if name == "onecycle":  # rise over the first 30%, then cosine down to 0
        warmup = max(1, int(0.3 * total))
    if step < warmup:
        return (step + 1) / warmup
    if name == "constant":
        return 1.0
    if name == "step":
        return gamma ** (step // (step_size * steps_per_epoch))
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def build_scheduler(optimizer: torch.optim.Optimizer, name: str, total: int, steps_per_epoch: int,
                    warmup_epochs: int, step_size: int, gamma: float) -> torch.optim.lr_scheduler.LambdaLR:
    """The stage's LR schedule over ``total`` optimizer steps (plain numbers: the factor runs
    once per parameter group per step)."""

    def factor(step: int) -> float:
        return lr_factor(name, step, total, steps_per_epoch, warmup_epochs, step_size, gamma)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
