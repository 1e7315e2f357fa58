"""One plug mechanism for every axis: a strategy, a model family and a dataset are each a
folder with a torch-free ``config.py``, its implementation and a README.

``Plugs(axis, package)`` finds the plugs of one axis: every sub-folder of ``package`` that
holds a ``config.py``, plus the plugs installed packages declare under the entry-point group named like the
package (``stagetrain.datasets``, ``stagetrain.families``, ``stagetrain.strategies``) (name = the plug's name, value = its package, e.g.
``toy = mypkg.datasets.toy``). Nothing is imported while names are listed: a plug's code
runs only when the user's own config names it (``dataset=toy``). A plug's package forwards
attribute lookups to its ``config`` module first, then to its implementation modules
(``exports``), so torch loads only when a run needs the implementation.

What each axis's plugs provide is documented where the axis is: ``strategies/__init__.py``,
``families/__init__.py``, ``datasets/__init__.py``. ``axis(key)`` is the one ``Plugs`` of each
axis (those packages' ``STRATEGIES``, ``FAMILIES``, ``DATASETS``), also for lower layers that
read a plug's declarations back (a plan's stage settings, a spec's part types).
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import pkgutil
from collections.abc import Callable, Iterator, Mapping
from types import ModuleType
from typing import Any

from stagetrain.core.errors import StagetrainError, did_you_mean


class Plugs(Mapping[str, ModuleType]):
    """name -> plug package of one axis (``key``: the config key that names it, e.g. ``dataset``;
    ``what``: how a message calls a plug of it; ``package``: the folder of the in-tree plugs,
    whose dotted name is also the entry-point group of installed ones)."""

    def __init__(self, key: str, what: str, package: str, required: tuple[str, ...] = ("Config", "validate")):
        self.key, self.what, self.package, self.required = key, what, package, required
        self.group = package  # the entry-point group of installed plugs: the package's dotted name
        self._loaded: dict[str, ModuleType] = {}
        self._found: dict[str, str] | None = None

    def _where(self) -> dict[str, str]:
        """name -> package path: the folders of the axis's package, then installed plugs (read once)."""
        if self._found is None:
            path = importlib.import_module(self.package).__path__
            found = {info.name: f"{self.package}.{info.name}" for info in pkgutil.iter_modules(path) if info.ispkg}
            for entry in importlib.metadata.entry_points(group=self.group):
                found.setdefault(entry.name, entry.value)
            self._found = found
        return self._found

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._where()))

    def __len__(self) -> int:
        return len(self._where())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self._where()

    def __getitem__(self, name: str) -> ModuleType:
        if name not in self._loaded:
            where = self._where()
            if name not in where:
                raise KeyError(name)
            module = importlib.import_module(where[name])
            missing = [attr for attr in self.required if not hasattr(module, attr)]
            if missing:
                raise TypeError(f"the {self.key} plug {where[name]} lacks {', '.join(missing)} (see plugs.py)")
            self._loaded[name] = module
        return self._loaded[name]

    def plug(self, name: str) -> ModuleType:
        """The plug, or one paragraph naming the valid ones."""
        if name not in self:
            names = list(self)
            raise StagetrainError(f"{self.key}={name} is not a {self.what}; valid: {', '.join(names)}."
                                  f"{did_you_mean(str(name), names)}")
        return self[name]

    def config(self, name: str) -> ModuleType:
        """The plug's torch-free ``config`` module (its dataclass, ``validate`` and hooks)."""
        return importlib.import_module(f"{self._where()[name]}.config")

    def hook(self, name: str, attr: str) -> Any:
        """The plug's optional ``attr`` (a hook or constant), or None."""
        return getattr(self.plug(name), attr, None)


AXES = {  # config key -> (what a plug is, its package, what its config/package must define)
    "strategy": ("strategy", "stagetrain.strategies", ("name", "Config", "validate", "build")),
    "model": ("model family", "stagetrain.families", ("Config", "validate", "spec")),
    "dataset": ("dataset", "stagetrain.datasets", ("Config", "validate", "meta")),
}


@functools.cache
def axis(key: str) -> Plugs:
    """The plugs of the axis ``key`` (``strategy``, ``model``, ``dataset``), found once."""
    what, package, required = AXES[key]
    return Plugs(key, what, package, required)


def exports(package: str, *modules: str) -> Callable[[str], Any]:
    """A plug package's module ``__getattr__``: names from its ``config`` module, then from
    ``modules`` (its implementation, imported on first use: it may need torch)."""

    def __getattr__(attr: str) -> Any:
        if attr.startswith("__"):
            raise AttributeError(attr)
        for module in ("config", *modules):
            found = getattr(importlib.import_module(f"{package}.{module}"), attr, _MISSING)
            if found is not _MISSING:
                return found
        raise AttributeError(f"module {package!r} has no attribute {attr!r}")

    return __getattr__


_MISSING = object()
