"""grow: progressive growth, function-preserving by default (see README.md beside this file)."""

from stagetrain.strategies import plan_exports
from stagetrain.strategies.grow.config import Config, schedule, validate

__all__ = ["Config", "name", "schedule", "validate"]

name = "grow"
__getattr__ = plan_exports(__name__)  # build (and hooks) from plan.py, on first use
