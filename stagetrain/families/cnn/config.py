"""``model=cnn``: conv blocks (Conv [+BatchNorm] + activation + max-pool), then optional
dense blocks (``model.fc_widths``), then a flatten + linear head.

Pooling follows every ``model.pool_every``-th conv block while the feature map allows.
With dense blocks the classic transfer setup (freeze the convs, retrain the dense layers)
and Net2Net widening of a dense layer inside a CNN are expressible.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from stagetrain.core.errors import StagetrainError, check_positive
from stagetrain.core.partbase import Block
from stagetrain.core.parts import Conv
from stagetrain.datasets import inputs
from stagetrain.families.mlp.config import check_common, check_widths, classifier, dense_block


@dataclass
class Config:
    name: str = "cnn"
    channels: list[int] = field(default_factory=lambda: [16, 32])
    kernel: int = 3
    pool: int = 2
    pool_every: int = 1
    fc_widths: list[int] = field(default_factory=list)
    bn: bool = True
    activation: str = "relu"
    dropout: float = 0.0


def validate(model: Any, dataset: Any) -> None:
    check_common(model)
    check_widths("channels", model.channels, "[16,32]")
    check_widths("fc_widths", model.fc_widths, "[128]", allow_empty=True)
    for key in ("kernel", "pool", "pool_every"):
        check_positive(f"model.{key}", getattr(model, key), allow_zero=key != "kernel")
    if not is_image(dataset):
        raise StagetrainError(
            f"model=cnn needs image inputs, but dataset={dataset.name} gives {inputs(dataset)}. "
            "Use model=mlp, or give dataset.shape=[channels,height,width].")


def is_image(dataset: Any) -> bool:
    return inputs(dataset) == "image"


def spec(m: Any, in_shape: tuple[int, ...], num_classes: int) -> dict[str, Any]:
    blocks: list[Block] = []
    c, h, w = in_shape
    every = int(m.pool_every)
    for i, out in enumerate(m.channels):
        due = every > 0 and (i + 1) % every == 0
        pool = int(m.pool) if due and m.pool and min(h, w) >= 2 * m.pool else 0
        if pool:
            h, w = h // pool, w // pool
        blocks.append(Conv(name=f"block{i + 1}", inp=c, out=int(out), kernel=int(m.kernel), pool=pool,
                           act=m.activation, bn=bool(m.bn), dropout=float(m.dropout), out_shape=[int(out), h, w]))
        c = int(out)
    width = c * h * w
    for out in m.fc_widths:
        blocks.append(dense_block(f"block{len(blocks) + 1}", width, out, m))
        width = int(out)
    return classifier(in_shape, num_classes, blocks, width).to_dict()


def grow_widths(m: Any) -> list[int]:
    """Grow schedules the conv channels; dense blocks (``fc_widths``) stay as configured
    unless the schedule lists them too (then they are the entries after the convs)."""
    return [*m.channels, *m.fc_widths]


def with_grow_widths(m: Any, widths: list[int]) -> Any:
    n = len(m.channels)
    if len(widths) <= n:
        return replace(m, channels=list(widths), fc_widths=[])
    return replace(m, channels=list(widths[:n]), fc_widths=list(widths[n:]))


def batch_norm(m: Any) -> bool:
    """Whether the model normalises over the batch (``train.batch_size=1`` is then refused)."""
    return bool(m.bn)
