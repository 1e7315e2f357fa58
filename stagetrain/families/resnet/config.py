"""``model=resnet``: a stem, one residual stage per entry of ``model.stage_channels``
(``blocks_per_stage`` units each, basic or bottleneck), and a global-average-pool + linear
head. Every stage but the first halves the resolution in its first unit.

Each stage is one block (one trainable group): layer-wise training trains a stage at a
time, grow widens stages (Net2Net through the units, BN statistics, shortcut and the
consumer) and deepens by inserting a stride-1 stage of one zero-scale unit.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from stagetrain.core.errors import StagetrainError, check_choice
from stagetrain.core.parts import PoolLinear, ResnetStem
from stagetrain.datasets import inputs
from stagetrain.families.cnn.config import is_image
from stagetrain.families.mlp.config import check_widths, classifier

STEMS = ("cifar", "imagenet")
UNITS = ("basic", "bottleneck")


@dataclass
class Config:
    name: str = "resnet"
    stem: str = "cifar"
    stem_channels: int = 16
    stage_channels: list[int] = field(default_factory=lambda: [16, 32, 64])
    blocks_per_stage: Any = 1  # an int for every stage, or one int per stage
    block: str = "basic"


def _listed(value: Any) -> list[Any]:
    """``blocks_per_stage`` as a list (a scalar, a list, or Hydra's ListConfig)."""
    return [value] if isinstance(value, int | str | float) else list(value)


def validate(model: Any, dataset: Any) -> None:
    check_choice("model.stem", model.stem, STEMS)
    check_choice("model.block", model.block, UNITS)
    if int(model.stem_channels) <= 0:
        raise StagetrainError(f"model.stem_channels={model.stem_channels} must be a positive channel count, e.g. 16.")
    check_widths("stage_channels", model.stage_channels, "[16,32,64]")
    units = _listed(model.blocks_per_stage)
    n = len(model.stage_channels)
    if any(not isinstance(u, int) or u <= 0 for u in units) or len(units) not in (1, n):
        raise StagetrainError(
            f"model.blocks_per_stage={model.blocks_per_stage} is not valid: give one positive number of residual "
            f"units for every stage (e.g. 2), or one per stage ({n} numbers, e.g. {[1] * n}).")
    if not is_image(dataset):
        raise StagetrainError(
            f"model=resnet needs image inputs, but dataset={dataset.name} gives {inputs(dataset)}. "
            "Use model=mlp, or give dataset.shape=[channels,height,width].")


def units_per_stage(m: Any) -> list[int]:
    units = [int(u) for u in _listed(m.blocks_per_stage)]
    return [units[min(i, len(units) - 1)] for i in range(len(m.stage_channels))]


def spec(m: Any, in_shape: tuple[int, ...], num_classes: int) -> dict[str, Any]:
    from stagetrain.models.resnet_spec import stage_spec, stem_out_hw

    c, h, w = in_shape
    hw = stem_out_hw(m.stem, h, w)
    stem = ResnetStem(kind=m.stem, inp=int(c), out=int(m.stem_channels), in_hw=[h, w],
                      out_shape=[int(m.stem_channels), *hw])
    blocks, cin = [], int(m.stem_channels)
    for i, (out, units) in enumerate(zip(m.stage_channels, units_per_stage(m), strict=True)):
        blocks.append(stage_spec(f"block{i + 1}", m.block, cin, out, units, 1 if i == 0 else 2, hw))
        hw, cin = blocks[-1].out_shape[1:], int(out)
    return classifier(in_shape, num_classes, blocks, PoolLinear(inp=cin, out=int(num_classes)), stem=stem).to_dict()


def grow_widths(m: Any) -> list[int]:
    """Grow schedules the stage channels (one width per stage)."""
    return list(m.stage_channels)


def with_grow_widths(m: Any, widths: list[int]) -> Any:
    """The model whose stages have ``widths`` channels (``blocks_per_stage`` follows: a
    list is cut to the stages, or repeats its last entry)."""
    units = [int(u) for u in _listed(m.blocks_per_stage)]
    per_stage = [units[min(i, len(units) - 1)] for i in range(len(widths))]
    return replace(m, stage_channels=list(widths), blocks_per_stage=per_stage if len(units) > 1 else units[0])


def batch_norm(m: Any) -> bool:
    """Its blocks normalise over the batch (``train.batch_size=1`` is then refused)."""
    return True
