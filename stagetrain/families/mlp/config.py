"""``model=mlp``: fully connected blocks (Linear [+BatchNorm] + activation [+dropout]) and a
linear head; one block per entry of ``model.widths``. The spec is built from typed records
(``core/parts.py``: ``Dense``, ``LinearHead``) and handed on as its plain dict."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

from stagetrain.core.errors import StagetrainError, check_choice
from stagetrain.core.partbase import Block, Head, Part
from stagetrain.core.parts import Dense, LinearHead
from stagetrain.core.schema import ACTIVATIONS
from stagetrain.core.spec import ModelSpec


@dataclass
class Config:
    name: str = "mlp"
    widths: list[int] = field(default_factory=lambda: [256, 128, 64])
    activation: str = "relu"
    bn: bool = False
    dropout: float = 0.0


def check_common(model: Any) -> None:
    """The options mlp and cnn share: activation and dropout."""
    check_choice("model.activation", model.activation, ACTIVATIONS)
    if not 0 <= model.dropout < 1:
        raise StagetrainError(f"model.dropout={model.dropout} is out of range: it must be in [0, 1).")


def check_widths(key: str, widths: Any, example: str, allow_empty: bool = False) -> None:
    if (not widths and not allow_empty) or any(int(w) <= 0 for w in widths or []):
        raise StagetrainError(f"model.{key}={list(widths or [])} is not valid: give one positive width per "
                              f"block, e.g. {example}.")


def validate(model: Any, dataset: Any) -> None:
    check_common(model)
    check_widths("widths", model.widths, "[256,128]")


def dense_block(name: str, width: int, out: int, m: Any) -> Dense:
    return Dense(name=name, inp=int(width), out=int(out), act=m.activation, bn=bool(m.bn), dropout=float(m.dropout),
                 out_shape=[int(out)])


def classifier(in_shape: tuple[int, ...], num_classes: int, blocks: list[Block], head: Head | int,
               stem: Part | None = None) -> ModelSpec:
    """The typed spec of blocks under a head (``head``: a part, or the input width of the
    default flatten + Linear head)."""
    if isinstance(head, int):
        head = LinearHead(inp=int(head), out=int(num_classes))
    return ModelSpec(in_shape=list(in_shape), num_classes=int(num_classes), stem=stem, blocks=blocks, head=head)


def spec(m: Any, in_shape: tuple[int, ...], num_classes: int) -> dict[str, Any]:
    blocks, width = [], math.prod(in_shape)
    for i, out in enumerate(m.widths):
        blocks.append(dense_block(f"block{i + 1}", width, out, m))
        width = int(out)
    return classifier(in_shape, num_classes, blocks, width).to_dict()


def grow_widths(m: Any) -> list[int]:
    return list(m.widths)


def with_grow_widths(m: Any, widths: list[int]) -> Any:
    return replace(m, widths=list(widths))


def grow_schedule(m: Any) -> list[list[int]]:
    """grow's default: one hidden layer of 16 -> 64 -> 256 units (the quick start's growth)."""
    return [[16], [64], [256]]


def batch_norm(m: Any) -> bool:
    """Whether the model normalises over the batch (``train.batch_size=1`` is then refused)."""
    return bool(m.bn)
