"""scratch's options and their checks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from stagetrain.errors import StagetrainError
from stagetrain.schema import StrategyConfig


@dataclass
class Config(StrategyConfig):
    name: str = "scratch"
    epochs: int | None = None


def validate(cfg: Any) -> None:
    if cfg.strategy.epochs is not None and cfg.strategy.epochs <= 0:
        raise StagetrainError(f"strategy.epochs={cfg.strategy.epochs} is out of range: it must be > 0.")
