"""``dataset=text``: the corpus as language-model windows (``data/text.py``)."""

from __future__ import annotations

from typing import Any

from stagetrain.data.bundle import DataBundle
from stagetrain.data.text import lm_bundle
from stagetrain.datasets.text.config import corpus


def bundle(ds: Any, seed: int, storage: str = "memory") -> DataBundle:  # not STREAMABLE: always memory
    return lm_bundle(ds, seed, corpus(ds))
