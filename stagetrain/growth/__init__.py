"""Growth operators. ``ops.apply_op`` applies a stage's ops with the operators each block's
registered type provides (``dense`` for linear/conv blocks); ``units`` holds the pieces any
operator can use; ``optimizer`` carries moments through a widening."""

from stagetrain.growth.dense import deepen_dense, widen_dense
from stagetrain.growth.ops import apply_op, stack
from stagetrain.growth.optimizer import map_optimizer_state, optimizer_state_by_name
from stagetrain.growth.units import (
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
