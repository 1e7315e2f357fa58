"""Growth, above the models: ``ops.apply_op`` applies a stage's model ops with the operators
each block's registered type provides (they live with the part types, below:
``models/dense_growth.py`` for linear/conv blocks, ``models/resnet_growth.py``,
``models/transformer_growth.py``, all built from ``models/growth_units.py``), depth stacking
and LoRA add/merge; ``optimizer`` carries moments through a widening. The operators and
units are re-exported here."""

from stagetrain.growth.ops import apply_op, stack
from stagetrain.growth.optimizer import map_optimizer_state, optimizer_state_by_name
from stagetrain.models.dense_growth import deepen_dense, widen_dense
from stagetrain.models.growth_units import (
           consumer_units,
           copy_norm,
           copy_units,
           fresh_name,
           own_units,
           read_units,
           widen_info,
)

__all__ = ["apply_op", "consumer_units", "copy_norm", "copy_units", "deepen_dense", "fresh_name",
           "map_optimizer_state", "optimizer_state_by_name", "own_units", "read_units", "stack", "widen_dense",
           "widen_info"]
