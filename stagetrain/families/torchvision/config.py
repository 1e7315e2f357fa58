"""``model=torchvision``: ``torchvision.models.<model.arch>`` with its stem / block / head
cut filled in from a table (``ARCHS``), built with ``weights=None`` (never a download) and
``num_classes`` set to the data's classes. Pretrained weights come from a file
(``strategy=finetune strategy.source=<file.pth>``), see the README section "Your own network".

One-channel images (digits, MNIST) are repeated to 3 channels in the stem
(``model.in_channels_adapt=repeat``, the default). ViTs need square images whose side is a
multiple of the patch size; their ``image_size`` follows the data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from stagetrain.core.errors import StagetrainError, check_choice
from stagetrain.core.tvarchs import ARCHS
from stagetrain.families.custom.config import (
    check_adapt,
    check_kwargs,
    cut_spec,
    input_shape,
    plain_kwargs,
)


@dataclass
class Config:
    name: str = "torchvision"
    arch: str = "resnet18"  # a key of ARCHS
    kwargs: Any = None  # extra builder arguments (weights is always None)
    in_channels_adapt: str = "repeat"  # repeat | none: one-channel images repeated to 3 channels


def validate(model: Any, dataset: Any) -> None:
    check_choice("model.arch", model.arch, tuple(ARCHS))
    shape = input_shape(dataset)
    if len(shape) != 3:
        raise StagetrainError(f"model=torchvision needs image inputs, but dataset={dataset.name} has shape "
                              f"{list(shape)}. Use model=mlp, or give dataset.shape=[3,32,32].")
    check_adapt(model.in_channels_adapt, dataset)
    check_kwargs(model.kwargs)
    if (model.kwargs or {}).get("weights") is not None:
        raise StagetrainError("model.kwargs.weights must stay null: stagetrain never downloads weights. Save them "
                              "to a file once (torch.save(model.state_dict(), 'w.pth')) and fine-tune from it "
                              "with strategy=finetune strategy.source=w.pth.")
    channels = int(shape[0])
    if channels != 3 and not (channels == 1 and model.in_channels_adapt == "repeat"):
        raise StagetrainError(f"model.arch={model.arch} takes 3-channel images; dataset={dataset.name} has "
                              f"{channels}. With one channel, set model.in_channels_adapt=repeat.")
    patch = ARCHS[model.arch].get("patch")
    if patch and (shape[1] != shape[2] or shape[1] % patch):
        raise StagetrainError(f"model.arch={model.arch} needs square images whose side is a multiple of its patch "
                              f"size {patch}; dataset={dataset.name} gives {list(shape[1:])}. Use e.g. "
                              f"dataset=synthetic dataset.shape=[3,{2 * patch},{2 * patch}].")


def spec(m: Any, in_shape: tuple[int, ...], num_classes: int) -> dict[str, Any]:
    a = ARCHS[m.arch]
    kwargs = {**plain_kwargs(m.kwargs or {}), "weights": None, "num_classes": int(num_classes)}
    if a.get("patch"):
        kwargs["image_size"] = int(in_shape[1])
    return cut_spec(f"torchvision.models.{m.arch}", kwargs, a["stem"], a["blocks"], a["head"], a["head_input"],
                    m.in_channels_adapt, in_shape, num_classes)


def batch_norm(m: Any) -> bool:
    """Its blocks normalise over the batch (``train.batch_size=1`` is then refused)."""
    return True


def trust_targets(m: Any) -> list[str]:
    """The builder this config names (``core/trust.py``): torchvision.models.<arch>."""
    return [f"torchvision.models.{m.get('arch')}"] if m.get("arch") else []
