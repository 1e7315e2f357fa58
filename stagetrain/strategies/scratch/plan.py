"""scratch: train the final architecture end to end from random initialisation.

The baseline every other strategy is compared with: same engine, data, optimizer choices
and accounting, one stage. ``strategy.flops`` bounds it by training FLOPs instead of
epochs and ``strategy.arch_from`` takes the architecture a staged run ended with: together
they are the equal-FLOPs scratch control of ``compare.scratch=true`` (``stagetrain.runs.control``).
"""

from __future__ import annotations

import json
from typing import Any

from stagetrain.core.plan import Plan
from stagetrain.families import build_spec
from stagetrain.strategies.common import all_groups, stage_from_cfg
from stagetrain.strategies.scratch.config import arch_file


def initial_spec(cfg: Any, in_shape: tuple[int, ...], num_classes: int) -> dict[str, Any]:
    """``model=``'s architecture, or the final one of the run ``strategy.arch_from`` names."""
    if cfg.strategy.arch_from is None:
        return build_spec(cfg.model, in_shape, num_classes)
    return read_arch(arch_file(cfg.strategy.arch_from), f"strategy.arch_from={cfg.strategy.arch_from}")


def read_arch(path: Any, where: str) -> dict[str, Any]:
    """The ``arch`` metadata of a model.safetensors file (its header only, through the file
    gate), checked as data: a spec a file gives names code only when the config vouches."""
    from stagetrain.core import userfile
    from stagetrain.core.errors import StagetrainError
    from stagetrain.nn.specfile import check_spec
    from stagetrain.source import safetensors_metadata

    with userfile.open_file(path, where, "source") as f:
        try:
            arch = json.loads(safetensors_metadata(f)["arch"])
        except (ValueError, KeyError, TypeError, RecursionError) as e:
            raise StagetrainError(f"{where}: {path} has no readable 'arch' metadata ({type(e).__name__}: {e}); "
                                  "give a model.safetensors that stagetrain wrote.") from None
    check_spec(arch, where)
    return arch


def build(cfg: Any, spec: dict[str, Any]) -> Plan:
    s = cfg.strategy
    epochs = None if s.flops is not None else s.epochs or cfg.train.epochs
    stage = stage_from_cfg(cfg, name="train", epochs=epochs, trainable=all_groups(spec),
                           max_flops=float(s.flops) if s.flops is not None else None,
                           description="all blocks and the head, from random initialisation"
                           + (f", for {float(s.flops):.3g} training FLOPs" if s.flops is not None else ""))
    return Plan("scratch", [stage])
