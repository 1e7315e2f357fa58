"""Hydra writes into a job's directory before the job runs (``.hydra/*.yaml``, the job's
``stagetrain.log``, a sweep's ``multirun.yaml``). A write that fails there (a full disk)
becomes one ``Error:`` paragraph, with the directories made for the job removed again,
instead of Hydra's traceback. The wrapping of Hydra's two writing functions is private to
Hydra and lives in ``hydra_private.wrap_hydra_writes`` (checked by the full-disk rows of
``tests/test_hostile_edges.py``).

Hydra prints the paragraph and exits; a caller that wants the message itself (the Python
API, through ``cli.execute``) listens for it for the length of one command
(``reporting_to``): the message travels to that caller's own object, never into state
that outlives the command.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.errors import CompactHydraException
from hydra.types import RunMode

from stagetrain.app.hydra_private import wrap_hydra_writes

# Who hears of a refused write during the current command (set and reset by reporting_to).
_listener: ContextVar[Callable[[str], None] | None] = ContextVar("stagetrain_hydra_writes", default=None)


class HydraWriteError(CompactHydraException):
    """Hydra could not write into a job's directory; Hydra prints it as it is (one line)."""

    def __init__(self, paragraph: str):
        super().__init__(f"Error: {paragraph} Nothing was run.")
        self.paragraph = paragraph


@contextmanager
def reporting_to(listen: Callable[[str], None]) -> Iterator[None]:
    """For the length of one command, ``listen(paragraph)`` hears of a refused Hydra write."""
    token = _listener.set(listen)
    try:
        yield
    finally:
        _listener.reset(token)


def _refuse_hydra_write(e: OSError, path: object) -> None:
    """One ``Error:`` paragraph for a write Hydra failed before the job started (a full disk),
    with the directories made for the job removed again (they hold nothing of a run yet)."""
    from stagetrain.app.callbacks import remove_empty_sweep_dir
    from stagetrain.runs.rundir import RunDir
    from stagetrain.runs.runlock import fs_error

    error = HydraWriteError(str(fs_error(path, "write", e)))
    listen = _listener.get()
    if listen is not None:
        listen(error.paragraph)
    try:
        hydra_cfg = HydraConfig.get()
        RunDir(Path(hydra_cfg.runtime.output_dir)).remove_if_unused()
        if hydra_cfg.mode == RunMode.MULTIRUN:
            remove_empty_sweep_dir(Path(hydra_cfg.sweep.dir))
    except Exception:  # noqa: BLE001 - Hydra's config is not set yet: nothing was made for a job
        pass
    raise error from None


def guard_hydra_writes() -> None:
    """A full disk or another write failure before a job starts becomes one paragraph
    (``_refuse_hydra_write``) instead of Hydra's traceback. Idempotent."""
    wrap_hydra_writes(_refuse_hydra_write)
