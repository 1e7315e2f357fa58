"""Structured config schema (registered in Hydra's ConfigStore) and cross-field validation.

Hydra checks key names and types when it composes the config (unknown keys and wrong
types fail there, before anything runs). ``validate`` then checks values and combinations,
still before any data is loaded or a run directory is used.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf

from stagetrain.errors import StagetrainError, check_choice, did_you_mean

IMAGE_DATASETS = ("digits", "mnist", "fashion_mnist", "cifar10")
DATASETS = (*IMAGE_DATASETS, "synthetic")
OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "cosine", "onecycle", "step")
ACTIVATIONS = ("relu", "leaky_relu", "gelu", "tanh", "sigmoid")
OBJECTIVES = ("supervised", "autoencoder", "denoising", "rbm")


@dataclass
class DatasetConfig:
    name: str = MISSING
    root: str = "${oc.env:STAGETRAIN_DATA,'~/.cache/stagetrain'}"
    download: bool = False
    val_fraction: float = 0.1
    labeled_fraction: float = 1.0
    classes: list[int] | None = None
    max_train: int | None = None


@dataclass
class SyntheticDatasetConfig(DatasetConfig):
    name: str = "synthetic"
    n_train: int = 2000
    n_test: int = 500
    shape: list[int] = field(default_factory=lambda: [1, 8, 8])
    num_classes: int = 10
    noise: float = 2.0


@dataclass
class MLPConfig:
    name: str = "mlp"
    widths: list[int] = field(default_factory=lambda: [256, 128, 64])
    activation: str = "relu"
    bn: bool = False
    dropout: float = 0.0


@dataclass
class CNNConfig:
    name: str = "cnn"
    channels: list[int] = field(default_factory=lambda: [16, 32])
    kernel: int = 3
    pool: int = 2
    bn: bool = True
    activation: str = "relu"
    dropout: float = 0.0


@dataclass
class TrainConfig:
    epochs: int = 20
    batch_size: int = 64
    patience: int | None = None
    eval_batch_size: int = 1024
    on_nonfinite: str = "stop"


@dataclass
class OptimConfig:
    name: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.9


@dataclass
class SchedConfig:
    name: str = "cosine"
    step_size: int = 10
    gamma: float = 0.1
    warmup_epochs: int = 0


@dataclass
class CheckpointConfig:
    every_steps: int = 0
    stage_checkpoints: bool = True


@dataclass
class DeviceConfig:
    name: str = "auto"
    precision: str = "fp32"
    compile: bool = False
    threads: int = 0
    deterministic: bool = False


@dataclass
class StrategyConfig:
    name: str = MISSING


@dataclass
class ScratchConfig(StrategyConfig):
    name: str = "scratch"
    epochs: int | None = None


@dataclass
class FinetuneStageConfig:
    enabled: bool = True
    epochs: int | None = None
    lr: float | None = None
    head_warmup_epochs: int = 0


@dataclass
class LayerwiseConfig(StrategyConfig):
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
    cache_max_bytes: int = 2 * 1024**3
    cache_dtype: str = "fp32"
    finetune: FinetuneStageConfig = field(default_factory=FinetuneStageConfig)


@dataclass
class GrowConfig(StrategyConfig):
    name: str = "grow"
    widths: Any = field(default_factory=lambda: [[16], [64], [256]])
    width_factor: float | None = None
    stages: int | None = None
    depths: list[int] | None = None
    data_fractions: list[float] | None = None
    trigger: str = "epochs"
    epochs_per_stage: int = 5
    final_epochs: int | None = None  # null: train.epochs
    plateau_patience: int = 2
    flops_shares: list[float] | None = None
    op: str = "net2net"
    noise: float = 0.0
    deepen: str = "identity"
    target: str | None = None
    flop_budget: float | None = None
    max_stages: int | None = None
    complexity_penalty: float | None = None
    optimizer_state: str = "reset"
    lr_after_growth: float = 1.0


@dataclass
class LoraConfig:
    rank: int = 4
    alpha: float = 8.0
    merge: bool = True


@dataclass
class PretrainConfig:
    enabled: bool = False
    dataset: str | None = None
    classes: list[int] | None = None
    objective: str = "supervised"
    epochs: int = 5
    lr: float | None = None
    noise: float = 0.2
    tied: bool = True


@dataclass
class FinetuneConfig(StrategyConfig):
    name: str = "finetune"
    source: str | None = None
    source_checkpoint: str = "best"
    mode: str = "full"
    epochs: int | None = None
    lr: float | None = None
    freeze_blocks: int = 1
    new_layers: int = 1
    unfreeze_every: int = 1
    lr_decay: float | None = None
    probe_epochs: int | None = None
    ft_lr_factor: float = 0.1
    lora: LoraConfig = field(default_factory=LoraConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    bn: str = "eval"
    head: str = "new"
    cache: str = "auto"
    cache_max_bytes: int = 2 * 1024**3
    cache_dtype: str = "fp32"


@dataclass
class LoggerConfig:
    tensorboard: bool = False


@dataclass
class RunConfig:
    dataset: DatasetConfig = MISSING
    model: Any = MISSING
    strategy: StrategyConfig = MISSING
    device: DeviceConfig = MISSING
    train: TrainConfig = field(default_factory=TrainConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    sched: SchedConfig = field(default_factory=SchedConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    seed: int = 0
    resume: str = "never"
    dry_run: bool = False
    progress: str = "auto"
    plots: bool = True


def register_configs() -> None:
    """Register the schemas; each YAML option names its schema in its defaults list."""
    cs = ConfigStore.instance()
    cs.store(name="run_schema", node=RunConfig)
    cs.store(group="schema/dataset", name="dataset", node=DatasetConfig)
    cs.store(group="schema/dataset", name="synthetic", node=SyntheticDatasetConfig)
    cs.store(group="schema/model", name="mlp", node=MLPConfig)
    cs.store(group="schema/model", name="cnn", node=CNNConfig)
    cs.store(group="schema/device", name="device", node=DeviceConfig)
    cs.store(group="schema/strategy", name="scratch", node=ScratchConfig)
    cs.store(group="schema/strategy", name="layerwise", node=LayerwiseConfig)
    cs.store(group="schema/strategy", name="grow", node=GrowConfig)
    cs.store(group="schema/strategy", name="finetune", node=FinetuneConfig)


def _positive(key: str, value: float | None, allow_zero: bool = False) -> None:
    if value is None:
        return
    bad = value < 0 if allow_zero else value <= 0
    if bad or (isinstance(value, float) and not math.isfinite(value)):
        bound = ">= 0" if allow_zero else "> 0"
        raise StagetrainError(f"{key}={value} is out of range: it must be {bound}.")


def _fraction(key: str, value: float, allow_zero: bool = False) -> None:
    low_ok = value >= 0 if allow_zero else value > 0
    if not (low_ok and value <= 1):
        raise StagetrainError(f"{key}={value} is out of range: it must be in (0, 1].")


def validate(cfg: DictConfig) -> None:
    """Check values and combinations that the type schema cannot; raise StagetrainError."""
    known = [f.name for f in fields(RunConfig)]
    for key in cfg:  # `+key=value` adds a top-level key Hydra's schema does not guard
        if key not in known and key != "hydra":
            raise StagetrainError(f"Unknown config key '{key}' (added with +{key}=...): stagetrain reads "
                                  f"only {', '.join(known)}.{did_you_mean(str(key), known)}")
    ds, model, train = cfg.dataset, cfg.model, cfg.train
    check_choice("dataset.name", ds.name, DATASETS)
    _fraction("dataset.labeled_fraction", ds.labeled_fraction)
    if not 0 < ds.val_fraction < 1:
        raise StagetrainError(f"dataset.val_fraction={ds.val_fraction} is out of range: it must be in (0, 1).")
    if ds.classes is not None:
        classes = list(ds.classes)
        if len(classes) < 2 or len(set(classes)) != len(classes) or min(classes) < 0:
            raise StagetrainError(
                f"dataset.classes={classes} is not valid: give at least two distinct non-negative class labels, e.g. [0,1,2,3,4]."
            )
    _positive("dataset.max_train", ds.max_train)
    if ds.name == "synthetic":
        _positive("dataset.n_train", ds.n_train)
        _positive("dataset.n_test", ds.n_test)
        if len(ds.shape) not in (1, 3) or min(ds.shape) <= 0:
            raise StagetrainError(f"dataset.shape={list(ds.shape)} is not valid: use [features] or [channels, height, width].")
        if ds.num_classes < 2:
            raise StagetrainError(f"dataset.num_classes={ds.num_classes} is out of range: it must be >= 2.")

    check_choice("model.name", model.name, ("mlp", "cnn"))
    check_choice("model.activation", model.activation, ACTIVATIONS)
    _fraction("model.dropout", model.dropout, allow_zero=True)
    if model.dropout >= 1:
        raise StagetrainError(f"model.dropout={model.dropout} is out of range: it must be in [0, 1).")
    if model.name == "mlp":
        if len(model.widths) == 0 or min(model.widths) <= 0:
            raise StagetrainError(f"model.widths={list(model.widths)} is not valid: give one positive width per hidden layer, e.g. [256,128].")
    else:
        if len(model.channels) == 0 or min(model.channels) <= 0:
            raise StagetrainError(f"model.channels={list(model.channels)} is not valid: give one positive channel count per conv block, e.g. [16,32].")
        _positive("model.kernel", model.kernel)
        _positive("model.pool", model.pool, allow_zero=True)
        is_image = ds.name in IMAGE_DATASETS or (ds.name == "synthetic" and len(ds.shape) == 3)
        if not is_image:
            raise StagetrainError(
                f"model=cnn needs image inputs, but dataset={ds.name} with shape {list(ds.shape)} is flat. "
                "Use model=mlp, or give dataset.shape=[channels,height,width]."
            )

    _positive("train.epochs", train.epochs)
    _positive("train.batch_size", train.batch_size)
    _positive("train.eval_batch_size", train.eval_batch_size)
    _positive("train.patience", train.patience)
    check_choice("train.on_nonfinite", train.on_nonfinite, ("stop", "skip_batch"))
    check_choice("optim.name", cfg.optim.name, OPTIMIZERS)
    _positive("optim.lr", cfg.optim.lr)
    _positive("optim.weight_decay", cfg.optim.weight_decay, allow_zero=True)
    check_choice("sched.name", cfg.sched.name, SCHEDULES)
    _positive("sched.step_size", cfg.sched.step_size)
    _positive("sched.warmup_epochs", cfg.sched.warmup_epochs, allow_zero=True)
    _positive("checkpoint.every_steps", cfg.checkpoint.every_steps, allow_zero=True)
    check_choice("device.name", cfg.device.name, ("auto", "cpu", "cuda", "mps"))
    check_choice("device.precision", cfg.device.precision, ("fp32", "bf16"))
    _positive("device.threads", cfg.device.threads, allow_zero=True)
    check_choice("progress", cfg.progress, ("auto", "rich", "plain", "off"))
    _positive("seed", cfg.seed, allow_zero=True)

    from stagetrain.strategies import STRATEGIES  # local: strategies import this module

    check_choice("strategy.name", cfg.strategy.name, STRATEGIES)
    STRATEGIES[cfg.strategy.name].validate(cfg)


def as_list(value: Any) -> list:
    """A config value that may be a scalar or a list, as a plain list."""
    if isinstance(value, ListConfig | list | tuple):
        return list(value)
    return [value]


def to_yaml(cfg: DictConfig) -> str:
    """The resolved config as YAML, for checkpoints and run.json (never a pickled object)."""
    return OmegaConf.to_yaml(cfg, resolve=True)
