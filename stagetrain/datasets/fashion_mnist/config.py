"""``dataset=fashion_mnist``: options, checks and sizes without reading the files (torch-free)."""

from __future__ import annotations

from typing import Any

from stagetrain.schema import DatasetConfig as Config  # no options beyond every dataset's

__all__ = ["Config", "RAW", "STREAMABLE", "meta", "validate"]

# what the torchvision reader (data/images.py, RawImages) needs to find, read and explain the files
RAW: dict[str, Any] = {
    "name": "fashion_mnist", "folder": "FashionMNIST", "tv_class": "FashionMNIST", "shape": (1, 28, 28), "classes": 10, "n_train": 60000,
    "layout": "idx",
    "offline": 'on Debian/Ubuntu, `apt install dataset-fashion-mnist` installs them gzipped in /usr/share/datasets/fashion-mnist/; gunzip each into {folder}/ (README, Data)',
}
STREAMABLE = True  # stream(): images read lazily from the IDX file


def meta(ds: Any) -> tuple[tuple[int, ...], int, int]:
    return RAW["shape"], RAW["classes"], RAW["n_train"]


def validate(ds: Any) -> None:
    """Nothing beyond the options every dataset has."""
