"""The config layer: Hydra's schema registration, the composed config as typed settings,
cross-field validation, and the engine's options.

Hydra checks key names and types when it composes the config (unknown keys and wrong
types fail there, before anything runs). ``validate`` then checks values and combinations,
still before any data is loaded or a run directory is used, and returns the typed
``RunConfig`` (plain dataclasses, ``core/schema.py``) that everything below the run layer gets:
only this module, the run layer (runner, resume, record) and ``app/`` touch OmegaConf.
"""

from __future__ import annotations

from dataclasses import fields, is_dataclass
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from stagetrain import datasets, families
from stagetrain.core.errors import StagetrainError, check_choice, did_you_mean
from stagetrain.core.ranges import check_values
from stagetrain.core.schema import CACHE_MAX_BYTES, DatasetConfig, DeviceConfig, RunConfig
from stagetrain.datasets import DATASETS
from stagetrain.families import FAMILIES, family
from stagetrain.runs.search import check_run
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


def validate(cfg: DictConfig | RunConfig) -> RunConfig:
    """Check values and combinations that the type schema cannot; raise StagetrainError.

    One pass, each axis's rules in their own place: the key names here, the run-wide ranges
    and choices (``core/ranges.py``), the dataset's (``datasets.validate``), the model's
    against the data (``families.validate``), the search settings (``search.check_run``),
    then the strategy plug's. Returns the typed settings (``settings``) that the run hands
    to strategies and the engine.
    """
    if isinstance(cfg, DictConfig):
        check_known_keys(cfg)
        cfg = settings(cfg)
    check_values(cfg)
    datasets.validate(cfg.dataset)
    cfg.model = families.validate(cfg.model, cfg.dataset, cfg.train.batch_size)
    check_run(cfg)
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


def to_yaml(cfg: DictConfig) -> str:
    """The resolved config as YAML, for checkpoints and run.json (never a pickled object)."""
    return OmegaConf.to_yaml(cfg, resolve=True)
