"""The engine: one training loop (``loop.Engine``) that runs any Plan with EngineOptions.

``runtime`` enters a stage, ``loop`` runs its epochs and steps, ``stopping`` decides why
a stage or the run ends, ``nonfinite`` guards against NaN/inf, ``cache`` holds frozen-prefix
features, ``evaluate`` scores a split, ``growing`` applies growth ops, ``state`` is what a
checkpoint restores. Names are imported on first use, so ``engine.options`` (read by the
config layer) costs no torch import.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {"Engine": "loop", "EngineOptions": "options", "NONFINITE_MAX_IN_A_ROW": "nonfinite",
            "freeze": "runtime", "prefix_len": "runtime"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
