"""``dataset=text_classification``: padded labelled texts (``data/text.py``)."""

from __future__ import annotations

from typing import Any

from stagetrain.data.bundle import DataBundle
from stagetrain.data.text import classification_bundle
from stagetrain.textfiles import read_labelled


def bundle(ds: Any, seed: int, storage: str = "memory") -> DataBundle:  # not STREAMABLE: always memory
    texts, labels = read_labelled(ds)
    return classification_bundle(ds, seed, texts, labels, read_labelled(ds, ds.test_path) if ds.test_path else None)
