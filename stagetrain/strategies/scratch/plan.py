"""scratch: train the final architecture end to end from random initialisation.

The baseline every other strategy is compared with: same engine, data, optimizer choices
and accounting, one stage.
"""

from __future__ import annotations

from typing import Any

from stagetrain.plan import Plan
from stagetrain.strategies.common import all_groups, stage_from_cfg


def build(cfg: Any, spec: dict[str, Any]) -> Plan:
    epochs = cfg.strategy.epochs or cfg.train.epochs
    stage = stage_from_cfg(cfg, name="train", epochs=epochs, trainable=all_groups(spec),
                           description="all blocks and the head, from random initialisation")
    return Plan("scratch", [stage])
