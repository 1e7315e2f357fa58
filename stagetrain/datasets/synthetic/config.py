"""``dataset=synthetic``: a seeded classification problem generated in memory (torch-free part)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from stagetrain.core.errors import StagetrainError, check_positive
from stagetrain.core.schema import DatasetConfig

ITEMSIZE = 4  # float32 inputs


@dataclass
class Config(DatasetConfig):
    name: str = "synthetic"
    n_train: int = 2000
    n_test: int = 500
    shape: list[int] = field(default_factory=lambda: [1, 8, 8])
    num_classes: int = 10
    noise: float = 2.0


def meta(ds: Any) -> tuple[tuple[int, ...], int, int]:
    return tuple(ds.shape), int(ds.num_classes), int(ds.n_train)


def samples(ds: Any) -> int:
    """Every sample it generates: training and test."""
    return int(ds.n_train) + int(ds.n_test)


def validate(ds: Any) -> None:
    check_positive("dataset.n_train", ds.n_train)
    check_positive("dataset.n_test", ds.n_test)
    if len(ds.shape) not in (1, 3) or min(ds.shape) <= 0:
        raise StagetrainError(f"dataset.shape={list(ds.shape)} is not valid: use [features] or [channels, height, width].")
    if ds.num_classes > ds.n_train or ds.num_classes > ds.n_test:
        raise StagetrainError(
            f"dataset.num_classes={ds.num_classes} is more than the samples (dataset.n_train={ds.n_train}, "
            f"dataset.n_test={ds.n_test}): every class needs samples; use at most {min(ds.n_train, ds.n_test)} "
            "classes or more samples.")
