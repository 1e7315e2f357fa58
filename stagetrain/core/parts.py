"""The records of the image and user-module part types (torch-free): ``linear``, ``conv``,
``linear_head``, the ResNet parts and the parts cut from a user's module (``model=custom`` /
``torchvision``). Their fields are the keys of the plain dict (``inp`` is "in"); see
``core/partbase.py`` for the round trip.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from stagetrain.core.partbase import Block, Head, Part


@dataclass(kw_only=True)
class Dense(Block):
    """``linear``: Linear [+BatchNorm] + activation [+dropout]; ``residual``: x + gate * f(x)
    (a block growth inserted); ``pool``: a conv block's max-pool (0 for none; growth writes 0
    into an inserted linear block too)."""

    TAG: ClassVar[str | None] = "linear"
    BUILDER: ClassVar[str] = "stagetrain.models.basic"
    ORDER: ClassVar[tuple[str, ...]] = ("name", "type", "in", "out", "act", "bn", "dropout", "out_shape")
    inp: int
    out: int
    act: str | None = None
    bn: bool | None = None
    dropout: float | None = None
    pool: int | None = None
    residual: bool | None = None


@dataclass(kw_only=True)
class Conv(Dense):
    """``conv``: Conv ('same' padding, ``kernel``) [+BatchNorm] + activation + max-pool."""

    TAG: ClassVar[str | None] = "conv"
    ORDER: ClassVar[tuple[str, ...]] = ("name", "type", "in", "out", "kernel", "pool", "act", "bn", "dropout",
                                        "out_shape")
    kernel: int


@dataclass(kw_only=True)
class LinearHead(Head):
    """``linear_head`` (flatten + Linear): the head of a spec whose head names no type."""

    TAG: ClassVar[str | None] = "linear_head"
    BUILDER: ClassVar[str] = "stagetrain.models.basic"
    ORDER: ClassVar[tuple[str, ...]] = ("in", "out")  # the default head: its dict names no type


@dataclass(kw_only=True)
class PoolLinear(Head):
    """``pool_linear``: global average pooling + Linear (ResNet)."""

    TAG: ClassVar[str | None] = "pool_linear"
    BUILDER: ClassVar[str] = "stagetrain.models.resnet"
    ORDER: ClassVar[tuple[str, ...]] = ("in", "out", "type")


@dataclass(kw_only=True)
class ResnetStem(Part):
    """``resnet_stem``: ``kind`` cifar (3x3 conv) or imagenet (7x7/2 conv + max-pool)."""

    TAG: ClassVar[str | None] = "resnet_stem"
    BUILDER: ClassVar[str] = "stagetrain.models.resnet"
    ORDER: ClassVar[tuple[str, ...]] = ("type", "kind", "in", "out", "in_hw", "out_shape")
    kind: str
    inp: int
    out: int
    in_hw: list[int]
    out_shape: list[int]


@dataclass(kw_only=True)
class ResnetStage(Block):
    """``resnet_stage``: ``units`` residual units (basic or bottleneck) of one stage."""

    TAG: ClassVar[str | None] = "resnet_stage"
    BUILDER: ClassVar[str] = "stagetrain.models.resnet"
    ORDER: ClassVar[tuple[str, ...]] = ("name", "type", "unit", "in", "out", "mid", "units", "stride", "shortcut",
                                        "in_hw", "out_shape")
    unit: str
    inp: int
    out: int
    mid: int
    units: int
    stride: int
    shortcut: str
    in_hw: list[int]


@dataclass(kw_only=True)
class CustomModule(Part):
    """``custom_module``: the user's whole network (``target`` built with ``kwargs``), the
    module the custom parts are cut from."""

    TAG: ClassVar[str | None] = "custom_module"
    BUILDER: ClassVar[str] = "stagetrain.models.custom"
    ORDER: ClassVar[tuple[str, ...]] = ("type", "target", "kwargs")
    target: str
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass(kw_only=True)
class CustomStem(Part):
    """``custom_stem``: the user module's submodules ``modules`` in order."""

    TAG: ClassVar[str | None] = "custom_stem"
    BUILDER: ClassVar[str] = "stagetrain.models.custom"
    ORDER: ClassVar[tuple[str, ...]] = ("type", "modules", "in_channels", "flops")
    modules: list[str] = field(default_factory=list)
    in_channels: int | None = None
    flops: float | None = None


@dataclass(kw_only=True)
class ViTStem(Part):
    """``vit_stem``: torchvision's ViT patch projection, class token and positions."""

    TAG: ClassVar[str | None] = "vit_stem"
    BUILDER: ClassVar[str] = "stagetrain.models.custom"
    ORDER: ClassVar[tuple[str, ...]] = ("type", "conv", "class_token", "pos_embedding", "dropout", "in_channels", "flops")
    conv: str
    class_token: str
    pos_embedding: str
    dropout: str
    in_channels: int | None = None
    flops: float | None = None


@dataclass(kw_only=True)
class CustomBlock(Block):
    """``custom_block``: the user module's submodule at ``path``."""

    TAG: ClassVar[str | None] = "custom_block"
    BUILDER: ClassVar[str] = "stagetrain.models.custom"
    ORDER: ClassVar[tuple[str, ...]] = ("name", "type", "path", "out_shape", "flops")
    path: str
    flops: float | None = None


@dataclass(kw_only=True)
class CustomHead(Head):
    """``custom_head``: the user module's ``modules`` after the glue ``input`` (e.g. pool_flatten)."""

    TAG: ClassVar[str | None] = "custom_head"
    BUILDER: ClassVar[str] = "stagetrain.models.custom"
    ORDER: ClassVar[tuple[str, ...]] = ("type", "modules", "input", "out", "in", "flops")
    modules: list[str] = field(default_factory=list)
    input: str | None = None
    flops: float | None = None
