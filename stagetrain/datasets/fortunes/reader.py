"""``dataset=fortunes``: language-model windows (task=lm) or padded labelled entries (``data/text.py``)."""

from __future__ import annotations

from typing import Any

from stagetrain.data.bundle import DataBundle
from stagetrain.data.text import classification_bundle, lm_bundle
from stagetrain.datasets.fortunes.config import corpus, labelled


def bundle(ds: Any, seed: int, storage: str = "memory") -> DataBundle:  # not STREAMABLE: always memory
    if ds.task == "lm":
        return lm_bundle(ds, seed, corpus(ds))
    return classification_bundle(ds, seed, *labelled(ds))
