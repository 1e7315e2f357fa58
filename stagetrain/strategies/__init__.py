"""Strategies: small folders that turn their config into a Plan. None owns a training loop.

A strategy is a folder ``strategies/<name>/`` whose package exports what ``Strategy``
below describes, plus its YAML in ``conf/strategy/<name>.yaml``. Folders are discovered
here, so adding one edits nothing else (see docs/architecture.md). Each folder's
``config.py`` (its options dataclass and ``validate``) imports no torch, so the command
line is checked without loading it; the package itself is imported on first use.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterator, Mapping
from types import ModuleType
from typing import Any, Protocol, runtime_checkable

from stagetrain.plan import Plan


@runtime_checkable
class Strategy(Protocol):
    """What a strategy package exports. Optional hooks, looked up with ``getattr``:

    * ``initial_spec(cfg, in_shape, num_classes) -> spec`` -- the run starts from another
      architecture than ``model=`` describes (grow starts small, finetune from its source);
    * ``final_spec(cfg, in_shape, num_classes) -> spec`` -- the run ends on another (larger)
      architecture than it starts from (grow): the preflight checks its size and memory too;
    * ``init_model(cfg, model) -> dict`` -- it starts from other weights (finetune's
      source); the dict is recorded in run.json as ``source``;
    * ``datasets(cfg) -> {name: dataset config}`` -- stages train on more data than the
      run's dataset (finetune's in-run pretraining: ``source``).
    """

    name: str
    Config: type  # the options dataclass (a subclass of schema.StrategyConfig), in config.py

    def validate(self, cfg: Any) -> None: ...  # in config.py: raise StagetrainError on bad values

    def build(self, cfg: Any, spec: dict[str, Any]) -> Plan: ...  # spec: the starting architecture


class _Registry(Mapping[str, Any]):
    """name -> strategy package, for every folder with a ``config.py``; imported on access."""

    def __init__(self) -> None:
        self._names = sorted(info.name for info in pkgutil.iter_modules(__path__) if info.ispkg)
        self._loaded: dict[str, ModuleType] = {}

    def __getitem__(self, name: str) -> Any:
        if name not in self._names:
            raise KeyError(name)
        if name not in self._loaded:
            module = importlib.import_module(f"{__name__}.{name}")
            if not isinstance(module, Strategy) or module.name != name:
                raise TypeError(f"stagetrain/strategies/{name}/ does not export name, Config, validate and build")
            self._loaded[name] = module
        return self._loaded[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


STRATEGIES: Mapping[str, Any] = _Registry()


def config_module(name: str) -> Any:
    """A strategy's ``config`` module (``Config``, ``validate``), without importing the rest."""
    return importlib.import_module(f"{__name__}.{name}.config")


def plan_exports(package: str) -> Any:
    """A strategy package's module ``__getattr__``: ``build`` and the optional hooks come
    from its ``plan.py``, imported on first use (it needs torch; ``config.py`` does not)."""

    def __getattr__(attr: str) -> Any:
        if attr.startswith("__"):
            raise AttributeError(attr)
        return getattr(importlib.import_module(f"{package}.plan"), attr)

    return __getattr__


def hook(name: str, hook_name: str) -> Any:
    """A strategy's optional hook (``initial_spec``, ``final_spec``, ``init_model``, ``datasets``), or None."""
    return getattr(STRATEGIES[name], hook_name, None)
