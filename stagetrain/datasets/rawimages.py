"""What the plugs of torchvision's image datasets share (torch-free): no options beyond every
dataset's, and sizes read from the plug's ``RAW`` description (the reader's ``RawImages``)."""

from __future__ import annotations

from typing import Any

from stagetrain.core.schema import DatasetConfig as Config

__all__ = ["Config", "meta_of", "no_options", "plug_of"]


def meta_of(raw: dict[str, Any], ds: Any) -> tuple[tuple[int, ...], int, int]:
    """(image shape, classes, official training-set size) from the description alone."""
    return tuple(raw["shape"]), int(raw["classes"]), int(raw["n_train"])


def no_options(ds: Any) -> None:
    """Nothing to check beyond the options every dataset has."""


def plug_of(raw: dict[str, Any]) -> tuple[Any, Any]:
    """A torchvision image plug's ``meta`` and ``validate`` hooks, from its ``RAW`` description."""
    return (lambda ds: meta_of(raw, ds)), no_options
