"""scratch's options and their checks."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stagetrain.core.errors import StagetrainError
from stagetrain.core.schema import StrategyConfig


@dataclass
class Config(StrategyConfig):
    name: str = "scratch"
    epochs: int | None = None
    flops: float | None = None  # train for this many training FLOPs instead of epochs (an equal-FLOPs control)
    arch_from: str | None = None  # a run directory or model.safetensors: train its final architecture


def validate(cfg: Any) -> None:
    s = cfg.strategy
    if s.epochs is not None and s.epochs <= 0:
        raise StagetrainError(f"strategy.epochs={s.epochs} is out of range: it must be > 0.")
    if s.flops is not None and not s.flops > 0:
        raise StagetrainError(f"strategy.flops={s.flops} is out of range: it must be > 0 (training FLOPs).")
    if s.arch_from is not None and not arch_file(s.arch_from).is_file():
        raise StagetrainError(f"strategy.arch_from={s.arch_from} holds no model.safetensors: give a completed "
                              "stagetrain run directory or its model.safetensors file.")


def arch_file(path: str) -> Path:
    p = Path(path).expanduser()
    return p / "model.safetensors" if p.is_dir() else p
