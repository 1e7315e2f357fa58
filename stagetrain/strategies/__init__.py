"""Strategies: small modules that turn their config into a Plan. None owns a training loop.

Each module provides ``validate(cfg)`` (raise StagetrainError on bad values) and
``build(cfg, spec) -> Plan`` (``spec``: the architecture spec of the model the run starts
from), and optionally ``initial_spec(cfg, in_shape, num_classes)`` when the run starts from
another architecture than ``model=`` describes (grow starts small), and
``init_model(cfg, model) -> dict`` when it starts from other weights (finetune loads a
source; the dict is recorded in run.json as ``source``). To add a strategy: write such a module, register it below, add its schema in
``stagetrain/config.py`` and its YAML in ``conf/strategy/``.
"""

from __future__ import annotations

from stagetrain.strategies import finetune, grow, layerwise, scratch

STRATEGIES = {"scratch": scratch, "layerwise": layerwise, "grow": grow, "finetune": finetune}
