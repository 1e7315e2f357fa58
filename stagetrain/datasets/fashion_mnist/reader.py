"""``dataset=fashion_mnist``: read through torchvision (or lazily, from the IDX files)."""

from __future__ import annotations

from typing import Any

from stagetrain.data.images import RawImages, load_torchvision, stream_idx
from stagetrain.datasets.fashion_mnist.config import RAW

SOURCE = RawImages(**RAW)


def load(ds: Any, seed: int) -> tuple:
    return load_torchvision(ds, SOURCE)


def stream(ds: Any, seed: int) -> tuple:
    return stream_idx(ds, SOURCE)
