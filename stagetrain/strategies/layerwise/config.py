"""layerwise's options and their checks."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from stagetrain.core.errors import StagetrainError, check_choice
from stagetrain.core.plan import AUTO_DEFAULTS
from stagetrain.core.schema import CACHE_MAX_BYTES, OBJECTIVES, StrategyConfig, as_list


@dataclass
class FinetuneStageConfig:
    enabled: bool = True
    epochs: int | None = None
    lr: float | None = None
    head_warmup_epochs: int = 0
    head_probe: str = "lbfgs"  # the warm-up: lbfgs (full-batch steps) | gradient (epochs at the run's LR)
    probe_l2: float = 3.0e-4


@dataclass
class AutoConfig:
    """``epochs=auto``: train a stage until its validation loss plateaus."""

    patience: int = AUTO_DEFAULTS["patience"]  # epochs without a relative improvement above min_delta, then it stops
    min_delta: float = AUTO_DEFAULTS["min_delta"]  # relative improvement of the best validation loss that counts
    max_epochs: int = AUTO_DEFAULTS["max_epochs"]  # at most this many (the LR schedule spans them; dry runs count them)


@dataclass
class Config(StrategyConfig):
    name: str = "layerwise"
    objective: str = "supervised"
    epochs_per_layer: Any = 5  # or "auto": until the stage's validation loss plateaus (strategy.auto)
    auto: AutoConfig = field(default_factory=AutoConfig)
    lr: float | None = None
    optimizer: str | None = None
    noise: Any = field(default_factory=lambda: [0.1, 0.2, 0.3])
    tied: bool = True
    aux_head: Any = "linear"  # linear | conv | mlp_sr, or k (int): linear with k plain 3x3 convs (older runs)
    aux_layers: int | None = None  # conv: 3x3 convs; mlp_sr: 1x1 convs (null: 2 / 3, as published)
    aux_width: int | None = None  # channels of those convs (null: the block's own)
    aux_grid: int | None = None  # average pooling to grid x grid before the classifier (null: 2)
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
    check_epochs("strategy.epochs_per_layer", s.epochs_per_layer, s.auto, "strategy.auto")
    for key, value in (("strategy.cd_k", s.cd_k),
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
    check_aux_head(s)
    if s.objective == "rbm":
        m = cfg.model
        if m.name != "mlp" or m.activation != "sigmoid" or m.bn:
            raise StagetrainError(
                "strategy.objective=rbm trains each block as a restricted Boltzmann machine, which needs "
                "sigmoid MLP blocks without BatchNorm: add model=mlp model.activation=sigmoid model.bn=false."
            )


AUX_HEADS = ("linear", "conv", "mlp_sr")  # stagetrain/nn/auxheads.py HEADS (this module stays torch-free)


def check_aux_head(s: Any) -> None:
    """strategy.aux_head is a kind or an old-style integer; its options are whole numbers in
    range, and only given to the kinds that read them (conv, mlp_sr)."""
    kind = s.aux_head
    if isinstance(kind, bool) or not (kind in AUX_HEADS or (isinstance(kind, int) and kind >= 0)):
        raise StagetrainError(
            f"strategy.aux_head={kind!r} is not valid: choose one of {', '.join(AUX_HEADS)} (the auxiliary "
            "classifier of supervised greedy stages), or a whole number k >= 0 (the older head: k plain 3x3 "
            "convs, global pooling and a linear layer).")
    for key, low in (("aux_layers", 0), ("aux_width", 1), ("aux_grid", 1)):
        value = getattr(s, key, None)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise StagetrainError(f"strategy.{key}={value!r} is out of range: give a whole number >= {low} (or null: "
                                  "the published default).")
        if kind not in ("conv", "mlp_sr"):
            raise StagetrainError(
                f"strategy.{key}={value} is an option of the conv and mlp_sr auxiliary heads, but "
                f"strategy.aux_head={kind!r}: add strategy.aux_head=conv (or mlp_sr), or drop strategy.{key}.")


def check_epochs(key: str, value: Any, auto: Any, auto_key: str) -> None:
    """An epochs option that may be ``auto`` (then its ``auto`` block is checked too)."""
    if value == "auto":
        if isinstance(auto.patience, bool) or not isinstance(auto.patience, int) or auto.patience < 1 \
                or not isinstance(auto.max_epochs, int) or auto.max_epochs < 1 or not 0 <= auto.min_delta < 1:
            raise StagetrainError(f"{auto_key}: patience and max_epochs must be whole numbers >= 1 and min_delta "
                                  f"in [0, 1) (got patience={auto.patience}, max_epochs={auto.max_epochs}, "
                                  f"min_delta={auto.min_delta}).")
        return
    how = (f"or auto (train until the stage's validation loss plateaus; {auto_key}.patience, .min_delta and "
           ".max_epochs say how)")
    if isinstance(value, bool) or not isinstance(value, int):
        raise StagetrainError(f"{key}={value} is not valid: expected an integer number of epochs (>= 1), {how}.")
    if value < 1:
        raise StagetrainError(f"{key}={value} is out of range: give a whole number of epochs >= 1, {how}.")
