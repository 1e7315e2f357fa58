"""finetune: transfer from a source run or in-run pretraining (see README.md beside this file)."""

from stagetrain.strategies.finetune.config import MODES, RANDOM, Config, validate
from stagetrain.strategies.finetune.plan import build, datasets, init_model, initial_spec

name = "finetune"
__all__ = ["MODES", "RANDOM", "Config", "build", "datasets", "init_model", "initial_spec", "name", "validate"]
