"""stagetrain: staged neural-network training (layer-wise, growth, fine-tuning) vs scratch.

Python API: ``stagetrain.run([...overrides], run_dir=...)`` runs one job as the command
line would and returns its run record; ``stagetrain.load(run_dir)`` reads a finished run's
model, config and metrics (see ``stagetrain.app.api``). Both are imported on first use, so
``import stagetrain`` stays cheap.
"""

from typing import Any

from stagetrain.core.version import __version__

__all__ = ["run", "load", "__version__"]


def __getattr__(name: str) -> Any:
    if name in ("run", "load", "Run", "RunFailed"):
        from stagetrain.app import api

        return getattr(api, name)
    raise AttributeError(f"module 'stagetrain' has no attribute {name!r}")
