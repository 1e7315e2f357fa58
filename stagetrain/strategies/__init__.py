"""Strategies: small folders that turn their config into a Plan. None owns a training loop.

A strategy is a plug (``core/plugs.py``): a folder ``strategies/<name>/`` (or an installed
package under the entry-point group ``stagetrain.strategies``) whose package exports what
``Strategy`` below describes, plus its YAML in ``conf/strategy/<name>.yaml``; adding one
edits nothing else (see docs/architecture.md). Each folder's
``config.py`` (its options dataclass and ``validate``) imports no torch, so the command
line is checked without loading it; the package itself is imported on first use.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from stagetrain.core.plan import Plan
from stagetrain.core.plugs import axis, exports


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


STRATEGIES = axis("strategy")


def config_module(name: str) -> Any:
    """A strategy's ``config`` module (``Config``, ``validate``), without importing the rest."""
    return STRATEGIES.config(name)


def plan_exports(package: str) -> Any:
    """A strategy package's module ``__getattr__``: ``Config``/``validate`` from its
    ``config.py``, ``build`` and the optional hooks from its ``core/plan.py``, imported on first
    use (it needs torch; ``config.py`` does not)."""
    return exports(package, "plan")



def hook(name: str, hook_name: str) -> Any:
    """A strategy's optional hook (``initial_spec``, ``final_spec``, ``init_model``, ``datasets``), or None."""
    return getattr(STRATEGIES[name], hook_name, None)
