"""scratch: the baseline (see README.md beside this file)."""

from stagetrain.strategies.scratch.config import Config, validate
from stagetrain.strategies.scratch.plan import build

name = "scratch"
__all__ = ["Config", "build", "name", "validate"]
