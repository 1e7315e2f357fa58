"""Growth at a stage start: apply the stage's operators, and log the loss on a fixed probe
batch (the first 256 validation samples) just before and just after -- with Net2Net
operators they are equal."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from stagetrain.core.plan import Stage
from stagetrain.engine.state import RunState
from stagetrain.growth import apply_op
from stagetrain.models import StagedModel, count_parameters

PROBE_SAMPLES = 256


def grow(model: StagedModel, stage: Stage, k: int, seed: int, probe: Callable[[StagedModel], dict[str, float]],
         log: Callable[[dict[str, Any]], None], state: RunState) -> tuple[StagedModel, list[dict[str, Any]]]:
    """The grown model and each op's unit mapping (for carrying Adam moments through it);
    ``probe(model)`` scores a model on the probe batch."""
    before, params = probe(model), count_parameters(model)
    g = torch.Generator().manual_seed(seed * 7919 + k)
    mappings = []
    for op in stage.ops:
        model, info = apply_op(model, op, g)
        mappings.append(info)
    after = probe(model)
    log({"event": "growth", "stage": k + 1, "stage_name": stage.name, "ops": [op.to_dict() for op in stage.ops],
         "probe_loss_before": before["loss"], "probe_loss_after": after["loss"],
         "params_before": params, "params_after": count_parameters(model),
         "step": state.global_step, "flops": state.flops})
    return model, mappings
