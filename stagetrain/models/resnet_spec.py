"""The typed spec of a ResNet stage (``core/parts.ResnetStage``) and the stem's output size (torch-free): used by the
family that builds the spec (``families/resnet.py``), the part types (``models/resnet.py``)
and the stage inserted by ``deepen_stage`` (``models/resnet_growth.py``)."""

from __future__ import annotations

from stagetrain.core.parts import ResnetStage

EXPANSION = 4  # bottleneck: out channels per inner (mid) channel


def conv_out(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def stage_spec(name: str, unit: str, cin: int, out: int, units: int, stride: int, in_hw: list[int]) -> ResnetStage:
    """One ``resnet_stage`` block; the shortcut projects whenever the shape changes."""
    out_hw = [(s - 1) // stride + 1 for s in in_hw]
    return ResnetStage(name=name, unit=unit, inp=int(cin), out=int(out),
                       mid=int(out) if unit == "basic" else max(1, int(out) // EXPANSION), units=int(units),
                       stride=int(stride), shortcut="projection" if cin != out or stride != 1 else "identity",
                       in_hw=list(in_hw), out_shape=[int(out), *out_hw])


def stem_out_hw(kind: str, h: int, w: int) -> list[int]:
    """Spatial size after the stem: cifar keeps it; imagenet halves it twice (conv, max-pool)."""
    if kind == "cifar":
        return [h, w]
    return [conv_out(conv_out(s, 7, 2, 3), 3, 2, 1) for s in (h, w)]
