"""``dataset=cifar10``: read through torchvision."""

from __future__ import annotations

from typing import Any

from stagetrain.data.images import RawImages, load_torchvision
from stagetrain.datasets.cifar10.config import RAW

SOURCE = RawImages(**RAW)


def load(ds: Any, seed: int) -> tuple:
    return load_torchvision(ds, SOURCE)
