"""Models: the part-type registry, the built-in part types and ``StagedModel``.

Families (``model=mlp|cnn|...``) build a spec (``families.build_spec``); ``StagedModel(spec)``
builds the modules from the registered part types.
"""

from stagetrain.models.basic import ACTIVATIONS, Block, Head
from stagetrain.models.registry import PARTS, PartType, part_type, register
from stagetrain.models.staged import StagedModel, count_parameters, trainable_parameters

__all__ = ["ACTIVATIONS", "PARTS", "Block", "Head", "PartType", "StagedModel",
           "count_parameters", "part_type", "register", "trainable_parameters"]
