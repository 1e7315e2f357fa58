"""The config schema as plain dataclasses: what a composed config holds, typed.

Hydra builds the config from these (``config.register_configs`` puts them in its
ConfigStore) and ``config.settings`` turns a composed config into instances of them,
so nothing below the run layer ever sees an OmegaConf object. A strategy's own options
live in its folder (``strategies/<name>/config.py``) as a subclass of ``StrategyConfig``; a
dataset's options beyond ``DatasetConfig``'s in ``datasets/<name>/config.py``; a model
family's in ``families/<name>/config.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

MISSING: Any = "???"  # OmegaConf's marker for a value the config must set

STORAGES = ("auto", "memory", "stream")
AUGMENTS = ("none", "flip", "crop", "flip_crop")  # data/augment.py builds them
OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "cosine", "onecycle", "step")
SHARDS = ("none", "fsdp")  # device.shard: none (one whole model per rank, DDP) | fsdp (FSDP2 under torchrun)
ACTIVATIONS = ("relu", "leaky_relu", "gelu", "tanh", "sigmoid")
OBJECTIVES = ("supervised", "autoencoder", "denoising", "rbm")  # layer-wise ones; "lm" is the head's own
CACHE_MAX_BYTES = 2 * 1024**3  # default budget of a frozen-prefix feature cache


@dataclass
class DatasetConfig:
    name: str = MISSING
    root: str = "${oc.env:STAGETRAIN_DATA,'~/.cache/stagetrain'}"
    download: bool = False
    val_fraction: float = 0.1
    labeled_fraction: float = 1.0
    classes: list[int] | None = None
    max_train: int | None = None
    storage: str = "auto"  # memory | stream | auto: memory when the inputs fit memory_budget
    memory_budget: float = 0.5  # bytes, or (<= 1) a fraction of the free device memory
    workers: int = 2  # DataLoader worker processes of a streamed split
    augment: str = "none"  # training augmentation preset (streamed image datasets)


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
    fused: bool = True  # Adam/AdamW as one fused kernel per group (CPU, CUDA); false: the per-parameter loop


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
    shard: str = "none"  # none | fsdp (torchrun: FSDP2 fully_shard per block, sharded checkpoints)
    activation_checkpointing: bool = False  # recompute each block's activations in the backward pass


@dataclass
class StrategyConfig:
    name: str = MISSING


@dataclass
class LoggerConfig:
    tensorboard: bool = False
    every_steps: int = 50  # TensorBoard / MLflow: training loss and LR every N steps (0: per epoch only)
    mlflow: bool = False  # also log to MLflow (extra: stagetrain[mlflow])
    mlflow_uri: str | None = None  # MLflow tracking URI; None: the file store <cwd>/mlruns


@dataclass
class ObjectiveConfig:
    metric: str = "val/acc"  # what a search (-m with Optuna, tune.lr) selects on: val/acc | val/loss
    mode: str = "auto"  # max | min | auto (max for accuracy, min for loss)


@dataclass
class CompareConfig:
    control_key: str = "strategy"  # the control arm of a sweep's verdicts: the runs whose
    control_value: str = "scratch"  # config value at control_key is control_value
    level: float = 0.95  # confidence level of the intervals and verdicts
    scratch: bool = False  # after a staged run: its scratch control at equal training FLOPs (control.py)


@dataclass
class TuneConfig:
    lr: list[float] = field(default_factory=list)  # non-empty: a search over optim.lr, selected on validation
    grid: Any = None  # more keys to search: {key: [values]}, the product with lr


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
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    compare: CompareConfig = field(default_factory=CompareConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)
    seed: int = 0
    resume: str = "never"
    dry_run: bool = False
    progress: str = "auto"
    plots: bool = True
    trust_targets: list[str] = field(default_factory=list)  # callables a file's spec may name (trust.py)


def as_list(value: Any) -> list:
    """A config value that may be a scalar or a list, as a plain list."""
    if isinstance(value, list | tuple):
        return list(value)
    return [value]
