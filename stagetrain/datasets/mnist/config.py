"""``dataset=mnist``: options, checks and sizes without reading the files (torch-free)."""

from __future__ import annotations

from functools import partial
from typing import Any

from stagetrain.datasets.rawimages import Config, meta_of
from stagetrain.datasets.rawimages import no_options as validate

__all__ = ["Config", "RAW", "STREAMABLE", "meta", "validate"]

# what the torchvision reader (data/images.py, RawImages) needs to find, read and explain the files
RAW: dict[str, Any] = {
    "name": "mnist", "folder": "MNIST", "tv_class": "MNIST", "shape": (1, 28, 28), "classes": 10, "n_train": 60000,
    "layout": "idx",
    "offline": 'copy them there from a machine that has them (e.g. its ~/.cache/stagetrain/MNIST/raw/)',
}
STREAMABLE = True  # stream(): images read lazily from the IDX file
meta = partial(meta_of, RAW)
