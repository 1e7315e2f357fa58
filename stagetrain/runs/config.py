"""The config layer: Hydra's schema registration, the composed config as typed settings,
cross-field validation, and the engine's options.

Hydra checks key names and types when it composes the config (unknown keys and wrong
types fail there, before anything runs). ``validate`` then checks values and combinations,
still before any data is loaded or a run directory is used, and returns the typed
``RunConfig`` (plain dataclasses, ``core/schema.py``) that everything below the run layer gets:
only this module and the run layer (runner, resume, record, cli) touch OmegaConf.
"""

from __future__ import annotations

from dataclasses import fields, is_dataclass
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from stagetrain.core.errors import StagetrainError, check_choice, check_positive, did_you_mean
from stagetrain.core.ranges import check_numbers
from stagetrain.core.schema import (
    AUGMENTS,
    CACHE_MAX_BYTES,
    OPTIMIZERS,
    SCHEDULES,
    SHARDS,
    STORAGES,
    DatasetConfig,
    DeviceConfig,
    RunConfig,
)
from stagetrain.datasets import DATASETS, dataset, inputs, streamable
from stagetrain.families import FAMILIES, family
from stagetrain.strategies import STRATEGIES, config_module


def register_configs() -> None:
    """Register the schemas; each YAML option names its schema in its defaults list."""
    cs = ConfigStore.instance()
    cs.store(name="run_schema", node=RunConfig)
    cs.store(group="schema/dataset", name="dataset", node=DatasetConfig)
    for name in DATASETS:
        cs.store(group="schema/dataset", name=name, node=DATASETS.config(name).Config)
    for name in FAMILIES:
        cs.store(group="schema/model", name=name, node=family(name).Config)
    cs.store(group="schema/device", name="device", node=DeviceConfig)
    for name in STRATEGIES:
        cs.store(group="schema/strategy", name=name, node=config_module(name).Config)


def settings(cfg: DictConfig) -> RunConfig:
    """The composed config as typed dataclasses (interpolations resolved, ``hydra`` dropped).

    An untyped config (a saved run's, read back from run.json) is first merged into the
    schemas its names select, which also checks its types."""
    node = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]) if "hydra" in cfg else cfg
    if OmegaConf.get_type(node) is not RunConfig:
        for key, options in (("dataset.name", DATASETS), ("model.name", FAMILIES), ("strategy.name", STRATEGIES)):
            check_choice(key, OmegaConf.select(node, key), options)
        try:
            node = OmegaConf.merge(_schema_for(node), node)
        except OmegaConfBaseException as e:
            raise StagetrainError(
                f"The saved config does not fit this stagetrain's schema at {getattr(e, 'full_key', '?')}: "
                f"{str(e).splitlines()[0]}. It was written by another version; start a new run, or "
                "resume it with the version that wrote it.") from None
    return OmegaConf.to_object(node)


def _schema_for(plain: DictConfig) -> DictConfig:
    schema = OmegaConf.structured(RunConfig)
    dataset = OmegaConf.select(plain, "dataset.name")
    schema.dataset = OmegaConf.structured(DATASETS.config(dataset).Config)
    model = OmegaConf.select(plain, "model.name")
    schema.model = OmegaConf.structured(family(model).Config)
    strategy = OmegaConf.select(plain, "strategy.name")
    schema.strategy = OmegaConf.structured(config_module(strategy).Config)
    schema.device = OmegaConf.structured(DeviceConfig)
    return schema


def engine_options(cfg: RunConfig, config_yaml: str) -> Any:
    """Everything the engine reads besides the plan (``EngineOptions``), from the validated settings."""
    # not at import time: the command-line checks must not import torch
    from stagetrain.engine.options import EngineOptions

    return EngineOptions(
        seed=int(cfg.seed), batch_size=int(cfg.train.batch_size),
        eval_batch_size=int(cfg.train.eval_batch_size), patience=cfg.train.patience,
        on_nonfinite=cfg.train.on_nonfinite, every_steps=int(cfg.checkpoint.every_steps),
        stage_checkpoints=bool(cfg.checkpoint.stage_checkpoints),
        bf16=cfg.device.precision == "bf16", compile=bool(cfg.device.compile),
        shard=str(cfg.device.shard), activation_checkpointing=bool(cfg.device.activation_checkpointing),
        cache_max_bytes=int(getattr(cfg.strategy, "cache_max_bytes", CACHE_MAX_BYTES)),
        cache_dtype=str(getattr(cfg.strategy, "cache_dtype", "fp32")),
        warmup_epochs=int(cfg.sched.warmup_epochs), step_size=int(cfg.sched.step_size),
        gamma=float(cfg.sched.gamma), fused_optimizer=bool(cfg.optim.fused), config_yaml=config_yaml,
    )


def _positive(key: str, value: float | None, allow_zero: bool = False) -> None:
    check_positive(key, value, allow_zero)


def _fraction(key: str, value: float, allow_zero: bool = False) -> None:
    low_ok = value >= 0 if allow_zero else value > 0
    if not (low_ok and value <= 1):
        raise StagetrainError(f"{key}={value} is out of range: it must be in (0, 1].")


def validate(cfg: DictConfig | RunConfig) -> RunConfig:
    """Check values and combinations that the type schema cannot; raise StagetrainError.

    Returns the typed settings (``settings``) that the run hands to strategies and the engine.
    """
    if isinstance(cfg, DictConfig):
        check_known_keys(cfg)
        cfg = settings(cfg)
    check_numbers(cfg)
    _validate_dataset(cfg.dataset)
    cfg.model = _validate_model(cfg.model, cfg.dataset)
    _validate_run(cfg)
    check_choice("strategy.name", cfg.strategy.name, STRATEGIES)
    config_module(cfg.strategy.name).validate(cfg)
    return cfg


def check_known_keys(node: DictConfig, prefix: str = "") -> None:
    """Refuse a key that a typed section's schema lacks: ``+key=value`` and ``++key=value`` add
    keys Hydra's schema does not guard (``+train.foo=1``), which nothing would read. Sections of
    free form (``model.kwargs``, ``tune.grid``: plain mappings) may hold any key."""
    schema = OmegaConf.get_type(node)
    if not is_dataclass(schema):
        return
    known = [f.name for f in fields(schema)]
    for key in node:
        name = f"{prefix}{key}"
        if prefix == "" and key == "hydra":  # Hydra's own settings: Hydra checks them
            continue
        if key not in known:
            where = f"{prefix.rstrip('.')} has" if prefix else "stagetrain reads only"
            hint = did_you_mean(str(key), known).replace("'", f"'{prefix}", 1)
            raise StagetrainError(f"Unknown config key '{name}' (added with +{name}=...): {where} "
                                  f"{', '.join(known)}.{hint}")
        child = node._get_node(key)
        if isinstance(child, DictConfig) and not child._is_none() and not child._is_interpolation():
            check_known_keys(child, f"{name}.")


def _validate_dataset(ds: DatasetConfig) -> None:
    """The options every dataset has, then the dataset plug's own ``validate``."""
    plug = dataset(ds.name)
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
    _validate_storage(ds)
    plug.validate(ds)


def _validate_storage(ds: DatasetConfig) -> None:
    check_choice("dataset.storage", ds.storage, STORAGES)
    check_choice("dataset.augment", ds.augment, AUGMENTS)
    _positive("dataset.memory_budget", ds.memory_budget)
    _positive("dataset.workers", ds.workers, allow_zero=True)
    can = f"it can be streamed for {', '.join(n for n in DATASETS if streamable(n))}"
    if ds.storage == "stream" and not streamable(ds.name):
        raise StagetrainError(f"dataset.storage=stream: dataset={ds.name} is always read into memory; {can}. "
                              "Use dataset.storage=auto or memory.")
    if ds.augment != "none" and (not streamable(ds.name) or ds.storage == "memory"):
        raise StagetrainError(f"dataset.augment={ds.augment} runs per sample in the streamed loader's workers, so it "
                              f"needs a streamed dataset ({can}) and dataset.storage=stream or auto "
                              f"(got dataset={ds.name}, dataset.storage={ds.storage}).")


def _validate_model(model: Any, ds: DatasetConfig) -> Any:
    """The model settings, checked, with values left to follow the data filled in (the
    family's optional ``resolve``: e.g. a transformer's vocabulary from a text dataset)."""
    fam = family(model.name)
    if inputs(ds) == "tokens" and not hasattr(fam, "resolve"):
        readers = " or ".join(f"model={n}" for n in FAMILIES if hasattr(family(n), "resolve"))
        raise StagetrainError(f"dataset={ds.name} gives token ids, which model={model.name} cannot read. Use a "
                              f"family whose stem embeds them: {readers}.")
    model = fam.resolve(model, ds) if hasattr(fam, "resolve") else model
    fam.validate(model, ds)
    return model


def _validate_run(cfg: RunConfig) -> None:
    train = cfg.train
    _positive("train.epochs", train.epochs)
    _positive("train.batch_size", train.batch_size)
    _positive("train.eval_batch_size", train.eval_batch_size)
    _positive("train.patience", train.patience)
    batch_norm = getattr(family(cfg.model.name), "batch_norm", None)
    if train.batch_size == 1 and batch_norm is not None and batch_norm(cfg.model):
        raise StagetrainError("train.batch_size=1 with model.bn=true: batch normalization needs at least two "
                              "samples per batch to compute its statistics. Use train.batch_size>=2 or model.bn=false.")
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
    check_choice("device.shard", cfg.device.shard, SHARDS)
    _positive("device.threads", cfg.device.threads, allow_zero=True)
    check_choice("progress", cfg.progress, ("auto", "rich", "plain", "off"))
    _positive("seed", cfg.seed, allow_zero=True)
    from stagetrain.runs.search import check_compare, check_objective, check_tune

    check_objective(cfg.objective.metric, cfg.objective.mode)
    check_compare(cfg.compare.control_key, cfg.compare.control_value, cfg.compare.level)
    check_tune(list(cfg.tune.lr), cfg.tune.grid, cfg.compare.scratch, cfg)


def to_yaml(cfg: DictConfig) -> str:
    """The resolved config as YAML, for checkpoints and run.json (never a pickled object)."""
    return OmegaConf.to_yaml(cfg, resolve=True)
