"""``dataset=cifar10``: options, checks and sizes without reading the files (torch-free)."""

from __future__ import annotations

from typing import Any

from stagetrain.schema import DatasetConfig as Config  # no options beyond every dataset's

__all__ = ["Config", "RAW", "meta", "validate"]

# what the torchvision reader (data/images.py, RawImages) needs to find, read and explain the files
RAW: dict[str, Any] = {
    "name": "cifar10", "folder": "cifar-10-batches-py", "tv_class": "CIFAR10", "shape": (3, 32, 32), "classes": 10, "n_train": 50000,
    "layout": "cifar",
    "offline": 'copy the extracted archive from a machine that has it',
}


def meta(ds: Any) -> tuple[tuple[int, ...], int, int]:
    return RAW["shape"], RAW["classes"], RAW["n_train"]


def validate(ds: Any) -> None:
    """Nothing beyond the options every dataset has."""
