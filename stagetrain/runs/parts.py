"""What a run trains, built from its settings: the data, the model it starts from and the
plan (``build_parts``), the architectures it starts and ends with (``run_specs``, which the
memory check and the dry run read), and an engine exactly as ``train`` builds one
(``build_engine``, for tests and benchmarks)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from omegaconf import DictConfig

from stagetrain.core.plan import Plan
from stagetrain.core.schema import RunConfig
from stagetrain.data import DataBundle
from stagetrain.datasets import load_data
from stagetrain.engine import Engine
from stagetrain.families import build_spec
from stagetrain.families import hook as family_hook
from stagetrain.models import StagedModel
from stagetrain.progress import Reporter
from stagetrain.runs.config import engine_options, to_yaml, validate
from stagetrain.runs.device import seed_everything
from stagetrain.runs.rundir import RunDir
from stagetrain.strategies import STRATEGIES, hook


def initial_spec(cfg: RunConfig, shape: tuple[int, ...], classes: int) -> dict[str, Any]:
    """The architecture the run starts from: the strategy's own, or the one ``model=`` gives."""
    own = hook(cfg.strategy.name, "initial_spec")
    return own(cfg, shape, classes) if own else build_spec(cfg.model, shape, classes)


def run_specs(cfg: RunConfig, shape: tuple[int, ...], classes: int) -> list[dict[str, Any]]:
    """The architectures the run starts and (when its strategy grows it) ends with."""
    final = hook(cfg.strategy.name, "final_spec")
    return [initial_spec(cfg, shape, classes)] + ([final(cfg, shape, classes)] if final else [])


@dataclass
class Parts:
    """What a run trains: its datasets (``target`` and any a strategy adds), the model it
    starts from, the plan, and what the strategy's ``init_model`` loaded (for run.json)."""

    datasets: dict[str, DataBundle]
    model: StagedModel
    plan: Plan
    source: dict[str, Any] | None


def build_parts(settings: RunConfig, device: torch.device, fresh: bool = True) -> Parts:
    """Data, model (the strategy's initial architecture and, when ``fresh``, weights) and plan."""
    datasets = {"target": load_data(settings.dataset, settings.seed, device).to(device)}
    spec = initial_spec(settings, datasets["target"].in_shape, datasets["target"].num_classes)
    seed_everything(settings.seed)
    model = StagedModel(spec).to(device)
    init_weights = family_hook(settings.model, "init_weights")  # e.g. model=hf: model.pretrained's weights
    if fresh and init_weights is not None:
        init_weights(settings.model, model)
    plan = STRATEGIES[settings.strategy.name].build(settings, spec)
    init_model = hook(settings.strategy.name, "init_model")
    source = init_model(settings, model) if fresh and init_model else None
    extra = hook(settings.strategy.name, "datasets")
    for name, dataset_cfg in (extra(settings) if extra else {}).items():
        datasets[name] = load_data(dataset_cfg, settings.seed, device).to(device)
    return Parts(datasets, model, plan, source)


def build_engine(cfg: DictConfig, device: torch.device, rundir: RunDir | None, reporter: Reporter,
                 resumed: dict[str, Any] | None = None, **collaborators: Any) -> tuple[Engine, dict[str, Any] | None]:
    """An engine exactly as ``train`` builds one (without run.json), and what
    ``init_model`` loaded; tests drive it directly."""
    settings = validate(cfg)
    parts = build_parts(settings, device, fresh=resumed is None)
    engine = Engine(parts.plan, engine_options(settings, to_yaml(cfg)), parts.datasets, parts.model, device,
                    reporter, rundir, **collaborators)
    if resumed is not None:
        engine.restore(resumed)
    return engine, parts.source
