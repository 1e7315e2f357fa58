"""``model=custom``: any ``nn.Module`` (a class or builder function named by its dotted
import path, ``model.target``) cut into a stem, blocks and a head by submodule names.

    model=custom model.target=torchvision.models.resnet18 model.kwargs='{num_classes: 10}'
    model.stem=[conv1,bn1,relu,maxpool] model.blocks=[layer1,layer2,layer3,layer4]
    model.head=fc model.head_input=pool_flatten

The contract: running the stem's submodules, then each block, then the parameter-free
``head_input`` glue, then the head's submodules computes the module's own forward. The spec
build checks it on a probe batch (and measures each block's output shape and FLOPs) and
refuses a cut that breaks it. The spec keeps the target, kwargs and the name map, so a
checkpoint rebuilds the model without the config. The user module is built once per model;
its submodules become the parts (``models/custom.py``).

This module imports no torch: the probe (``models/custom_probe.py``) is imported when a
spec is built.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from stagetrain.core.errors import StagetrainError, check_choice
from stagetrain.core.partbase import Part
from stagetrain.core.parts import CustomBlock, CustomHead, CustomModule, CustomStem
from stagetrain.core.spec import ModelSpec, part_from_dict
from stagetrain.core.trust import resolve_target
from stagetrain.datasets import dataset_meta

HEAD_INPUTS = ("none", "flatten", "pool_flatten", "pool", "cls_token")
ADAPT = ("none", "repeat")


@dataclass
class Config:
    name: str = "custom"
    target: str = ""  # dotted import path of an nn.Module class or builder, e.g. mypkg.nets.Net
    kwargs: Any = None  # keyword arguments of the target, e.g. {num_classes: 10}
    stem: list[str] = field(default_factory=list)  # submodules applied first (may be empty)
    blocks: list[str] = field(default_factory=list)  # submodules forming the stages, in forward order
    head: Any = "fc"  # a submodule path, or a list of them (applied in order)
    head_input: str = "none"  # parameter-free glue before the head: none|flatten|pool_flatten|pool|cls_token
    in_channels_adapt: str = "none"  # repeat: one-channel images are repeated to 3 channels in the stem


def heads(head: Any) -> list[str]:
    return [head] if isinstance(head, str) else [str(h) for h in head or []]


def validate(model: Any, dataset: Any) -> None:
    if not model.target:
        raise StagetrainError("model=custom needs model.target=<dotted path of an nn.Module class or builder>, "
                              "e.g. model.target=torchvision.models.resnet18, plus model.blocks=[...] and model.head.")
    resolve_target(model.target)
    check_kwargs(model.kwargs)
    check_names(model.stem, list(model.blocks), heads(model.head))
    check_choice("model.head_input", model.head_input, HEAD_INPUTS)
    check_adapt(model.in_channels_adapt, dataset)


def check_kwargs(kwargs: Any) -> None:
    if kwargs is not None and not isinstance(kwargs, dict):
        raise StagetrainError(f"model.kwargs={kwargs!r} must be a mapping of keyword arguments, e.g. "
                              "model.kwargs='{num_classes: 10}' (or +model.kwargs.num_classes=10).")


def check_names(stem: list[str], blocks: list[str], head: list[str]) -> None:
    if not blocks:
        raise StagetrainError("model.blocks is empty: name the submodules that form the stages, in forward "
                              "order, e.g. model.blocks=[layer1,layer2,layer3,layer4].")
    if not head:
        raise StagetrainError("model.head is empty: name the classifier submodule(s), e.g. model.head=fc.")
    names = [*stem, *blocks, *head]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise StagetrainError(f"model.stem/blocks/head name {', '.join(repeated)} more than once; each "
                              "submodule belongs to one part.")


def input_shape(dataset: Any) -> tuple[int, ...]:
    return tuple(dataset_meta(dataset)[0])


def check_adapt(adapt: str, dataset: Any) -> None:
    check_choice("model.in_channels_adapt", adapt, ADAPT)
    shape = input_shape(dataset)
    if adapt == "repeat" and len(shape) != 3:
        raise StagetrainError(f"model.in_channels_adapt=repeat needs image inputs, but dataset={dataset.name} "
                              f"has shape {list(shape)}. Use model.in_channels_adapt=none.")


def block_names(paths: list[str]) -> list[str]:
    """Group names for block paths: the last component (``layer1``, ``encoder_layer_0``), or
    the whole path with ``_`` for dots when that is numeric or not unique (``features_3``)."""
    last = [p.rpartition(".")[2] for p in paths]
    return [n if not n.isdigit() and last.count(n) == 1 else p.replace(".", "_") for n, p in zip(last, paths, strict=True)]


def cut_spec(target: str, kwargs: dict[str, Any], stem: list[str] | dict[str, Any], blocks: list[str],
             head: list[str], head_input: str, adapt: str, in_shape: tuple[int, ...],
             num_classes: int) -> dict[str, Any]:
    """The complete spec of a module cut by names (``stem`` may be a ready stem part spec),
    with shapes and FLOPs measured by a probe forward."""
    repeat = adapt == "repeat" and len(in_shape) == 3 and in_shape[0] == 1
    if isinstance(stem, dict):
        stem_part: Part | None = part_from_dict(stem, "stem")
    else:
        stem_part = CustomStem(modules=list(stem)) if stem or repeat else None
    if repeat:
        stem_part.in_channels = 3
    spec = ModelSpec(
        in_shape=list(in_shape), num_classes=int(num_classes), shared=CustomModule(target=target, kwargs=dict(kwargs)),
        stem=stem_part, blank={} if stem_part else {"stem": {}},  # no stem: written as {}
        blocks=[CustomBlock(name=n, path=p) for n, p in zip(block_names(blocks), blocks, strict=True)],
        head=CustomHead(modules=list(head), input=head_input, out=int(num_classes)))
    from stagetrain.models.custom_probe import complete  # torch, only when a spec is built

    return complete(spec)


def spec(m: Any, in_shape: tuple[int, ...], num_classes: int) -> dict[str, Any]:
    return cut_spec(m.target, plain_kwargs(m.kwargs or {}), list(m.stem), list(m.blocks), heads(m.head), m.head_input,
                    m.in_channels_adapt, in_shape, num_classes)


def plain_kwargs(value: Any) -> Any:
    """kwargs as plain JSON-able Python (a spec is stored as JSON in checkpoints)."""
    if isinstance(value, dict) or hasattr(value, "items"):
        return {str(k): plain_kwargs(v) for k, v in value.items()}
    if isinstance(value, list | tuple) or (hasattr(value, "__iter__") and not isinstance(value, str | bytes)):
        return [plain_kwargs(v) for v in value]
    return value


def trust_targets(m: Any) -> list[str]:
    """The callable this config names (``core/trust.py``): model.target, the user's own."""
    return [str(m.get("target"))] if m.get("target") else []
