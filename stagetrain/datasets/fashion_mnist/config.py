"""``dataset=fashion_mnist``: options, checks and sizes without reading the files (torch-free)."""

from __future__ import annotations

from functools import partial
from typing import Any

from stagetrain.datasets.rawimages import Config, meta_of
from stagetrain.datasets.rawimages import no_options as validate

__all__ = ["Config", "RAW", "STREAMABLE", "meta", "validate"]

# what the torchvision reader (data/images.py, RawImages) needs to find, read and explain the files
RAW: dict[str, Any] = {
    "name": "fashion_mnist", "folder": "FashionMNIST", "tv_class": "FashionMNIST", "shape": (1, 28, 28), "classes": 10, "n_train": 60000,
    "layout": "idx",
    "offline": 'on Debian/Ubuntu, `apt install dataset-fashion-mnist` installs them gzipped in /usr/share/datasets/fashion-mnist/; gunzip each into {folder}/ (README, Data)',
}
STREAMABLE = True  # stream(): images read lazily from the IDX file
meta = partial(meta_of, RAW)
