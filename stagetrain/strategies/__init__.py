"""Strategies: small folders that turn their config into a Plan. None owns a training loop.

A strategy is a folder ``strategies/<name>/`` whose package exports what ``Strategy``
below describes, plus its YAML in ``conf/strategy/<name>.yaml``. Folders are discovered
here, so adding one edits nothing else (see docs/architecture.md).
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any, Protocol, runtime_checkable

from stagetrain.plan import Plan


@runtime_checkable
class Strategy(Protocol):
    """What a strategy package exports. Optional hooks, looked up with ``getattr``:

    * ``initial_spec(cfg, in_shape, num_classes) -> spec`` -- the run starts from another
      architecture than ``model=`` describes (grow starts small, finetune from its source);
    * ``init_model(cfg, model) -> dict`` -- it starts from other weights (finetune's
      source); the dict is recorded in run.json as ``source``;
    * ``datasets(cfg) -> {name: dataset config}`` -- stages train on more data than the
      run's dataset (finetune's in-run pretraining: ``source``).
    """

    name: str
    Config: type  # the options dataclass (a subclass of schema.StrategyConfig)

    def validate(self, cfg: Any) -> None: ...  # raise StagetrainError on bad values

    def build(self, cfg: Any, spec: dict[str, Any]) -> Plan: ...  # spec: the starting architecture


def _discover() -> dict[str, Any]:
    found = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        if info.ispkg:
            module = importlib.import_module(f"{__name__}.{info.name}")
            if isinstance(module, Strategy):
                found[module.name] = module
    return found


STRATEGIES: dict[str, Any] = _discover()


def hook(name: str, hook_name: str) -> Any:
    """A strategy's optional hook (``initial_spec``, ``init_model``, ``datasets``), or None."""
    return getattr(STRATEGIES[name], hook_name, None)
