"""layerwise's options and their checks."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from stagetrain.errors import StagetrainError, check_choice
from stagetrain.schema import CACHE_MAX_BYTES, OBJECTIVES, StrategyConfig, as_list


@dataclass
class FinetuneStageConfig:
    enabled: bool = True
    epochs: int | None = None
    lr: float | None = None
    head_warmup_epochs: int = 0
    head_probe: str = "lbfgs"  # the warm-up: lbfgs (full-batch steps) | gradient (epochs at the run's LR)
    probe_l2: float = 3.0e-4


@dataclass
class Config(StrategyConfig):
    name: str = "layerwise"
    objective: str = "supervised"
    epochs_per_layer: int = 5
    lr: float | None = None
    optimizer: str | None = None
    noise: Any = field(default_factory=lambda: [0.1, 0.2, 0.3])
    tied: bool = True
    aux_head: Any = "linear"
    cd_k: int = 1
    rbm_lr: float = 0.05
    cache: str = "auto"
    cache_max_bytes: int = CACHE_MAX_BYTES
    cache_dtype: str = "fp32"
    finetune: FinetuneStageConfig = field(default_factory=FinetuneStageConfig)


def validate(cfg: Any) -> None:
    s = cfg.strategy
    check_choice("strategy.objective", s.objective, OBJECTIVES)
    check_choice("strategy.cache", s.cache, ("auto", "on", "off"))
    check_choice("strategy.cache_dtype", s.cache_dtype, ("fp32", "bf16"))
    if s.optimizer is not None:
        check_choice("strategy.optimizer", s.optimizer, ("sgd", "adam", "adamw"))
    for key, value in (("strategy.epochs_per_layer", s.epochs_per_layer), ("strategy.cd_k", s.cd_k),
                       ("strategy.lr", s.lr), ("strategy.rbm_lr", s.rbm_lr),
                       ("strategy.finetune.epochs", s.finetune.epochs), ("strategy.finetune.lr", s.finetune.lr)):
        if value is not None and not value > 0:
            raise StagetrainError(f"{key}={value} is out of range: it must be > 0.")
    check_choice("strategy.finetune.head_probe", s.finetune.head_probe, ("lbfgs", "gradient"))
    if not s.finetune.probe_l2 >= 0:
        raise StagetrainError(f"strategy.finetune.probe_l2={s.finetune.probe_l2} is out of range: it must be >= 0.")
    if s.finetune.head_warmup_epochs < 0:
        raise StagetrainError(f"strategy.finetune.head_warmup_epochs={s.finetune.head_warmup_epochs} must be >= 0.")
    for level in as_list(s.noise):
        if not isinstance(level, int | float) or not 0 <= level < 1:
            raise StagetrainError(f"strategy.noise={as_list(s.noise)} is not valid: give masking levels in [0, 1), one value or one per layer.")
    if s.aux_head != "linear" and not (isinstance(s.aux_head, int) and s.aux_head >= 0):
        raise StagetrainError(f"strategy.aux_head={s.aux_head!r} is not valid: use 'linear' or a number of extra conv layers (>= 0).")
    if s.objective == "rbm":
        m = cfg.model
        if m.name != "mlp" or m.activation != "sigmoid" or m.bn:
            raise StagetrainError(
                "strategy.objective=rbm trains each block as a restricted Boltzmann machine, which needs "
                "sigmoid MLP blocks without BatchNorm: add model=mlp model.activation=sigmoid model.bn=false."
            )
