"""Models: the part-type registry, the built-in part types and ``StagedModel``.

Families (``model=mlp|cnn|...``) build a spec (``build_spec``); ``StagedModel(spec)``
builds the modules from the registered part types.
"""

from stagetrain.models.basic import ACTIVATIONS, Block, Head
from stagetrain.models.registry import PARTS, PartType, part_type, register
from stagetrain.models.staged import StagedModel, count_parameters, trainable_parameters


def build_spec(model_cfg, in_shape, num_classes):
    """The architecture spec of ``model=<family>`` on inputs of ``in_shape``."""
    from stagetrain.families import family

    return family(model_cfg.name).spec(model_cfg, tuple(in_shape), int(num_classes))


__all__ = ["ACTIVATIONS", "PARTS", "Block", "Head", "PartType", "StagedModel", "build_spec",
           "count_parameters", "part_type", "register", "trainable_parameters"]
