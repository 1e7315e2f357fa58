"""``dataset=digits``: scikit-learn's 8x8 handwritten digits (torch-free)."""

from __future__ import annotations

from typing import Any

from stagetrain.core.schema import DatasetConfig as Config  # no options beyond every dataset's

__all__ = ["Config", "meta", "validate"]


def meta(ds: Any) -> tuple[tuple[int, ...], int, int]:
    return (1, 8, 8), 10, 1437  # 1,797 images, a fixed stratified 20% held out as test


def validate(ds: Any) -> None:
    """Nothing beyond the options every dataset has."""
