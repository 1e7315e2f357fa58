"""Hydra writes into a job's directory before the job runs (``.hydra/*.yaml``, the job's
``stagetrain.log``, a sweep's ``multirun.yaml``). A write that fails there (a full disk)
becomes one ``Error:`` paragraph, with the directories made for the job removed again,
instead of Hydra's traceback. This wraps two functions of ``hydra.core.utils`` (private:
checked by the full-disk rows of ``tests/test_hostile_edges.py`` on every Hydra upgrade).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.errors import CompactHydraException
from hydra.types import RunMode


class HydraWriteError(CompactHydraException):
    """Hydra could not write into a job's directory; Hydra prints it as it is (one line)."""


def _refuse_hydra_write(e: OSError, path: object, record: Callable[[str], None]) -> None:
    """One ``Error:`` paragraph for a write Hydra failed before the job started (a full disk),
    with the directories made for the job removed again (they hold nothing of a run yet)."""
    from stagetrain.callbacks import remove_empty_sweep_dir
    from stagetrain.rundir import RunDir
    from stagetrain.runlock import fs_error

    error = fs_error(path, "write", e)
    record(str(error))
    try:
        hydra_cfg = HydraConfig.get()
        RunDir(Path(hydra_cfg.runtime.output_dir)).remove_if_unused()
        if hydra_cfg.mode == RunMode.MULTIRUN:
            remove_empty_sweep_dir(Path(hydra_cfg.sweep.dir))
    except Exception:  # noqa: BLE001 - Hydra's config is not set yet: nothing was made for a job
        pass
    raise HydraWriteError(f"Error: {error} Nothing was run.") from None


def guard_hydra_writes(record: Callable[[str], None]) -> None:
    """Hydra opens a job's ``stagetrain.log`` and writes ``.hydra/*.yaml`` (a sweep's
    ``multirun.yaml``) before the job starts. A full disk or another write failure there
    becomes one paragraph (``_refuse_hydra_write``) instead of Hydra's traceback."""
    import hydra.core.utils as hydra_utils

    if getattr(hydra_utils._save_config, "stagetrain_guard", False):
        return
    save_original, log_original = hydra_utils._save_config, hydra_utils.configure_log

    def save_config(cfg: Any, filename: str, output_dir: Path) -> None:
        try:
            save_original(cfg, filename, output_dir)
        except OSError as e:
            _refuse_hydra_write(e, Path(output_dir) / filename, record)

    def configure_log(*args: Any, **kwargs: Any) -> None:
        try:
            log_original(*args, **kwargs)
        except ValueError as e:  # logging.config's wrapper of the OSError opening the log file
            if not isinstance(e.__cause__, OSError):
                raise
            _refuse_hydra_write(e.__cause__, e.__cause__.filename or "the job's log", record)

    save_config.stagetrain_guard = True  # type: ignore[attr-defined]
    hydra_utils._save_config, hydra_utils.configure_log = save_config, configure_log
