"""layerwise: greedy layer-wise pretraining, then fine-tuning (see README.md beside this file)."""

from stagetrain.strategies import plan_exports
from stagetrain.strategies.layerwise.config import Config, validate

__all__ = ["Config", "name", "validate"]

name = "layerwise"
__getattr__ = plan_exports(__name__)  # build (and hooks) from plan.py, on first use
