"""grow: progressive growth, function-preserving by default (see README.md beside this file)."""

from stagetrain.strategies.grow.config import Config, schedule, validate
from stagetrain.strategies.grow.plan import build, initial_spec

name = "grow"
__all__ = ["Config", "build", "initial_spec", "name", "schedule", "validate"]
