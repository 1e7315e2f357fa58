"""Full-batch L-BFGS for a stage that trains only a head on frozen features (a linear probe:
``strategy.probe=lbfgs``).

Logistic regression on fixed features is a smooth, convex problem that a quasi-Newton
method solves in tens of iterations, where a first-order optimizer at a default learning
rate can stop far from the optimum (issue 17: 0.40 test accuracy for a probe whose features
support 0.9). Such a stage takes its whole training set as one batch; each step is one
``torch.optim.LBFGS`` step of ``LBFGS_ITERS`` iterations with a strong-Wolfe line search,
and an L2 penalty of ``stage.weight_decay / 2 * |W|^2`` on the weight matrices. Every
loss evaluation is one forward and backward pass over the batch, and the engine charges
the FLOPs of each one.
"""

from __future__ import annotations

from typing import Any

import torch


def optimizer_step(rt: Any, stage: Any, h: torch.Tensor, y: torch.Tensor, loss: torch.Tensor,
                   logits: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None, int]:
    """The stage's optimizer step after the engine's forward and backward: (loss and logits to
    log, forward-backward passes made). L-BFGS re-evaluates the batch; its result is logged."""
    if stage.optimizer == "lbfgs":
        return solve(rt, h, y, stage.weight_decay)
    rt.optimizer.step()
    return loss, logits, 1


def solve(rt: Any, h: torch.Tensor, y: torch.Tensor, weight_decay: float
          ) -> tuple[torch.Tensor, torch.Tensor | None, int]:
    """One L-BFGS step on the batch (h, y): (loss after it, logits after it, forward-backward
    passes: the engine's before it, the solver's, and the last forward counted as one)."""
    params = [p for group in rt.optimizer.param_groups for p in group["params"]]
    evals = 0

    def closure() -> torch.Tensor:
        nonlocal evals
        evals += 1
        rt.optimizer.zero_grad(set_to_none=True)
        loss, _ = rt.step(h, y)
        if weight_decay:
            loss = loss + 0.5 * weight_decay * sum(p.square().sum() for p in params if p.ndim > 1)
        loss.backward()
        return loss

    rt.optimizer.step(closure)
    with torch.no_grad():
        loss, logits = rt.step(h, y)
    return loss, logits, evals + 2
