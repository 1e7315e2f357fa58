"""layerwise: greedy layer-wise pretraining, then fine-tuning (see README.md beside this file)."""

from stagetrain.strategies.layerwise.config import Config, validate
from stagetrain.strategies.layerwise.plan import build, greedy_stages

name = "layerwise"
__all__ = ["Config", "build", "greedy_stages", "name", "validate"]
