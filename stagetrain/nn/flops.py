"""FLOP accounting: what one training sample costs in a stage, counting only what runs.

``measure_step_flops`` runs one real forward+backward of the stage on a copy of the model
under ``torch.utils.flop_counter.FlopCounterMode`` (so frozen prefixes without backward,
tied decoders, CD-k sampling... are all counted as they really execute) and restores every
RNG, so measuring changes nothing about the run. ``analytic_flops`` is the closed form
for Linear/Conv stacks, used to cross-check the measurement in the tests.
Convention (both): a multiply-add is 2 FLOPs; only matmuls and convolutions are counted.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from stagetrain.core.plan import Stage
from stagetrain.models import StagedModel
from stagetrain.models.registry import part_flops
from stagetrain.nn.objectives import stage_loss

PROBE_BATCH = 2  # BatchNorm in train mode needs more than one sample


def measure_step_flops(
    stage: Stage, model: StagedModel, helper: nn.Module | None, x: torch.Tensor,
    y: torch.Tensor, prefix: int,
) -> tuple[float, float]:
    """(training FLOPs per sample, prefix forward FLOPs per sample) for ``stage``.

    ``x`` is a normalised model-input batch of PROBE_BATCH samples; ``prefix`` is the
    number of frozen leading blocks whose output is the stage's input.
    """
    return measure_stage_flops(stage, model, helper, x, y, prefix)[:2]


AUX_KINDS = ("aux_head", "lm_head")  # helpers that are auxiliary heads: their cost is reported apart


def measure_stage_flops(
    stage: Stage, model: StagedModel, helper: nn.Module | None, x: torch.Tensor,
    y: torch.Tensor, prefix: int,
) -> tuple[float, float, float]:
    """``measure_step_flops`` and, third, the auxiliary head's share of the training FLOPs
    per sample (0 without one): its forward and backward alone, on the input it received in
    the measured step (with that input's gradient when the block below trains)."""
    model_c, helper_c = copy.deepcopy(model), copy.deepcopy(helper)
    seen: list[torch.Tensor] = []
    if helper_c is not None and stage.helper is not None and stage.helper.kind in AUX_KINDS:
        helper_c.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    devices = [x.device] if x.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        with FlopCounterMode(display=False) as prefix_counter, torch.no_grad():
            h = model_c.features(x, 0, prefix)
        with FlopCounterMode(display=False) as step_counter:
            loss, _ = stage_loss(stage, model_c, helper_c, h.detach(), y, prefix, training=True)
            if loss.requires_grad:
                loss.backward()
        aux = _helper_flops(helper_c, seen[0]) if seen and loss.requires_grad else 0.0
    n = x.shape[0]
    return step_counter.get_total_flops() / n, prefix_counter.get_total_flops() / n, aux / n


def _helper_flops(helper: nn.Module, z: torch.Tensor) -> float:
    """FLOPs of the helper's forward and backward on ``z`` (all of them, for the batch)."""
    z_in = z.detach().requires_grad_(z.requires_grad)
    with FlopCounterMode(display=False) as counter:
        out = helper(z_in)
        out.float().sum().backward()
    return float(counter.get_total_flops())


def analytic_flops(model: StagedModel, first_trainable: int) -> float:
    """Forward+backward FLOPs per sample from the registered part types' closed forms:
    blocks before ``first_trainable`` frozen (no backward), everything from there on
    trainable (the stem trains with block 0).

    A part costs f forward, f more for its weight gradient when it trains, and f more for
    its input gradient when anything below it trains.
    """
    arch = model.arch
    parts = [arch.stem] if arch.stem is not None else []
    parts += [*arch.blocks, arch.head]
    offset = 1 if arch.stem is not None else 0
    total = 0.0
    for i, part in enumerate(parts):
        f = part_flops(part)
        trains = i >= first_trainable + offset or (offset and first_trainable == 0)
        below_trains = i > first_trainable + offset or (offset and first_trainable == 0 and i > 0)
        total += f * (1 + int(trains) + int(below_trains))
    return total
