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

The solver stops at convergence, not after a fixed number of passes: when the largest
gradient entry is at most ``GRAD_TOL`` or the loss changes by less than ``CHANGE_TOL``
between iterations. A later step of a converged probe makes no pass of its own (its
result is the engine's pass). The passes used are counted on the stage runtime
(``rt.solver_passes``) and logged when the stage's probe converges.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from stagetrain import distributed

log = logging.getLogger("stagetrain")
GRAD_TOL = 1e-4  # largest |gradient| entry of the penalised loss at which the probe has converged
CHANGE_TOL = 1e-9  # loss change (and step size) between iterations below which it stops


def optimizer_step(rt: Any, stage: Any, h: torch.Tensor, y: torch.Tensor, loss: torch.Tensor,
                   logits: torch.Tensor | None, share: float = 1.0) -> tuple[torch.Tensor, torch.Tensor | None, int]:
    """The stage's optimizer step after the engine's forward and backward: (loss and logits to
    log, forward-backward passes made). L-BFGS re-evaluates the batch; its result is logged.
    ``share`` weighs this rank's slice to the global mean under torchrun (as the engine does)."""
    if stage.optimizer == "lbfgs":
        if getattr(rt, "solver_converged", False):  # nothing left to solve: the engine's pass is the result
            rt.solver_passes = getattr(rt, "solver_passes", 0) + 1
            return loss, logits, 1
        return solve(rt, h, y, stage.weight_decay, share)
    rt.optimizer.step()
    return loss, logits, 1


def solve(rt: Any, h: torch.Tensor, y: torch.Tensor, weight_decay: float, share: float = 1.0
          ) -> tuple[torch.Tensor, torch.Tensor | None, int]:
    """One L-BFGS step on the batch (h, y): (loss after it, logits after it, forward-backward
    passes: the engine's before it, the solver's, and the last forward counted as one).

    Under torchrun each rank holds a slice of the batch: the closure returns the global loss
    (summed over ranks) and DDP averages the gradients, so every rank's L-BFGS sees the same
    numbers, takes the same line-search steps and makes the same number of passes (a rank
    that evaluated once more would wait on a collective the others never join)."""
    params = [p for group in rt.optimizer.param_groups for p in group["params"]]
    evals = 0

    def closure() -> torch.Tensor:
        nonlocal evals
        evals += 1
        rt.optimizer.zero_grad(set_to_none=True)
        loss, _ = rt.step(h, y)
        if weight_decay:
            loss = loss + 0.5 * weight_decay * sum(p.square().sum() for p in params if p.ndim > 1)
        (loss if share == 1 else loss * share).backward()
        if distributed.active():
            return torch.tensor(sum(distributed.all_sum([loss.detach() * share])) / distributed.world_size())
        return loss

    group = rt.optimizer.param_groups[0]
    group["tolerance_grad"], group["tolerance_change"] = GRAD_TOL, CHANGE_TOL
    state = rt.optimizer.state[params[0]]
    before = state.get("n_iter", 0)
    rt.optimizer.step(closure)
    with torch.no_grad():
        loss, logits = rt.step(h, y)
    iters = state.get("n_iter", 0) - before
    rt.solver_passes = getattr(rt, "solver_passes", 0) + evals + 2
    if iters < group["max_iter"] and evals < group["max_eval"]:  # stopped by a tolerance, not by a cap
        rt.solver_converged = True
        log.info("L-BFGS probe converged after %d forward-backward passes (loss %.6g)", rt.solver_passes, float(loss))
    return loss, logits, evals + 2
