"""The engine: one training loop (``loop.Engine``) that runs any Plan with EngineOptions.

``runtime`` enters a stage, ``loop`` runs its epochs and steps, ``stopping`` decides why
a stage or the run ends, ``nonfinite`` guards against NaN/inf, ``cache`` holds frozen-prefix
features, ``evaluate`` scores a split, ``state`` is what a checkpoint restores.
"""

from stagetrain.engine.loop import Engine
from stagetrain.engine.nonfinite import NONFINITE_MAX_IN_A_ROW
from stagetrain.engine.options import EngineOptions
from stagetrain.engine.runtime import freeze, prefix_len

__all__ = ["NONFINITE_MAX_IN_A_ROW", "Engine", "EngineOptions", "freeze", "prefix_len"]
