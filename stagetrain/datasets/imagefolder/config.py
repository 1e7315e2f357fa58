"""``dataset=imagefolder``: your own images, one folder per class (torch-free part)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from stagetrain.core.errors import StagetrainError, check_positive
from stagetrain.core.schema import DatasetConfig

STREAMABLE = True  # stream(): images decoded when read, in the DataLoader's workers


@dataclass
class Config(DatasetConfig):
    name: str = "imagefolder"  # dataset.root: the folder holding train/ (and optionally val/, test/)
    image_size: int = 32  # images are resized to image_size x image_size
    channels: int = 3  # 1: greyscale, 3: RGB

    @property
    def shape(self) -> list[int]:  # what the model families read of an image dataset
        return [self.channels, self.image_size, self.image_size]


def meta(ds: Any) -> tuple[tuple[int, ...], int, int, bool]:
    """(shape, classes, training samples, whether val/ exists), from the file names alone."""
    from stagetrain.data.imagefolder import folder_meta

    return folder_meta(ds)


def inputs(ds: Any) -> str:
    return "image"


def validate(ds: Any) -> None:
    check_positive("dataset.image_size", ds.image_size)
    if ds.channels not in (1, 3):
        raise StagetrainError(f"dataset.channels={ds.channels} is not valid: use 1 (greyscale) or 3 (RGB).")
