"""``dataset=cifar10``: options, checks and sizes without reading the files (torch-free)."""

from __future__ import annotations

from functools import partial
from typing import Any

from stagetrain.datasets.rawimages import Config, meta_of
from stagetrain.datasets.rawimages import no_options as validate

__all__ = ["Config", "RAW", "meta", "validate"]

# what the torchvision reader (data/images.py, RawImages) needs to find, read and explain the files
RAW: dict[str, Any] = {
    "name": "cifar10", "folder": "cifar-10-batches-py", "tv_class": "CIFAR10", "shape": (3, 32, 32), "classes": 10, "n_train": 50000,
    "layout": "cifar",
    "offline": 'copy the extracted archive from a machine that has it',
}
meta = partial(meta_of, RAW)
