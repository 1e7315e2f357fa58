"""finetune: transfer from a source run or in-run pretraining (see README.md beside this file)."""

from stagetrain.strategies import plan_exports
from stagetrain.strategies.finetune.config import MODES, RANDOM, Config, validate

__all__ = ["Config", "MODES", "RANDOM", "name", "validate"]

name = "finetune"
__getattr__ = plan_exports(__name__)  # build (and hooks) from plan.py, on first use
