"""What a step does differently under torchrun: per-rank noise and per-step agreement."""

from __future__ import annotations

import contextlib
import math
from typing import Any

import torch

from stagetrain import distributed


def noise(seed: int, step: int, device: torch.device, world: int) -> contextlib.AbstractContextManager[Any]:
    """Under torchrun each rank draws its own training noise (dropout, masks, CD-k samples)
    from RNGs seeded by (seed, step, rank) -- a function of the step, so resume stays exact
    -- and the run's RNG streams outside the step are left as one process leaves them."""
    if world == 1:
        return contextlib.nullcontext()
    return distributed.rank_rng((seed * 1_000_003 + step) * 1_009 + distributed.rank(), device)


def agree_step(loss: torch.Tensor, check_loss: bool, signalled: bool) -> tuple[torch.Tensor, bool]:
    """One small CPU all-reduce per step so that every rank acts alike: a signal that
    reached any rank stops all of them at this step (returned flag), and a non-finite loss
    on any rank is made non-finite on every rank (each then takes the same decision,
    instead of one leaving while the others wait in backward's all-reduce)."""
    bad, stop = distributed.any_rank(check_loss and not math.isfinite(loss.item()), signalled)
    return (loss * float("nan") if bad else loss), stop
