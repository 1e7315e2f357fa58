"""What a hyperparameter search optimises: one run's objective as a float.

``objective.metric`` (a validation metric: ``val/acc`` or ``val/loss``) and
``objective.mode`` (``max``, ``min``, or ``auto``: max for accuracy, min for loss) name it.
``stagetrain -m`` returns it from every job, so Hydra sweepers that optimise (Optuna) get a
number. A test metric is never an objective: selecting on it would leak the test split
into the choice. Pure Python: the command-line layer imports it without torch.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from stagetrain.core.errors import StagetrainError, check_choice

METRICS = ("val/acc", "val/loss")
MODES = ("auto", "max", "min")


def direction(metric: str, mode: str) -> str:
    """``max`` or ``min``: which way ``metric`` gets better."""
    if mode != "auto":
        return mode
    return "min" if metric.endswith("loss") else "max"


def check_run(cfg: Any) -> None:
    """The search settings of a run (``objective``, ``compare``, ``tune``), checked together."""
    check_objective(cfg.objective.metric, cfg.objective.mode)
    check_compare(cfg.compare.control_key, cfg.compare.control_value, cfg.compare.level)
    check_tune(list(cfg.tune.lr), cfg.tune.grid, cfg.compare.scratch, cfg)


def check_objective(metric: str, mode: str) -> None:
    if str(metric).startswith("test/"):
        raise StagetrainError(
            f"objective.metric={metric} is a test metric: a search that selects on the test split "
            f"reports a biased result. Select on a validation metric: {', '.join(METRICS)}.")
    check_choice("objective.metric", metric, METRICS)
    check_choice("objective.mode", mode, MODES)


def check_compare(key: str, value: str, level: float) -> None:
    if not str(key) or not str(value):
        raise StagetrainError(f"compare.control_key={key!r} compare.control_value={value!r} is not valid: name "
                              "the control runs of a sweep, e.g. compare.control_key=strategy "
                              "compare.control_value=scratch.")
    if not 0 < level < 1:
        raise StagetrainError(f"compare.level={level} is out of range: it must be in (0, 1), e.g. 0.95.")


# Keys a search may not vary: they define the job, the comparison or the data it is judged on.
FIXED = ("tune", "compare", "objective", "seed", "resume", "dry_run", "hydra")
DATA_TUNABLE = ("dataset.augment",)


def check_tune(lrs: list[float], grid: Any, scratch_control: bool, cfg: Any = None) -> None:
    """``tune.lr`` (learning rates > 0) and ``tune.grid`` (existing, tunable keys, each with a
    non-empty list of values); a tuned job's equal-FLOPs control would be untuned, so it is refused."""
    if any(not float(v) > 0 for v in lrs):
        raise StagetrainError(f"tune.lr={list(lrs)} is not valid: give learning rates > 0, e.g. tune.lr=[0.0003,0.001,0.003].")
    grid = {} if grid is None else grid
    if not hasattr(grid, "items"):
        raise StagetrainError(f"tune.grid={grid!r} is not valid: give a mapping of config keys to lists of values, "
                              "e.g. tune.grid={strategy.lr:[0.01,0.03],optim.weight_decay:[0,0.0001]}.")
    for key, values in grid.items():
        _check_grid_key(str(key), values, cfg, bool(lrs))
    if (lrs or grid) and scratch_control:
        raise StagetrainError("tune.lr / tune.grid and compare.scratch=true exclude each other: a tuned arm's control "
                              "must be tuned over the same grid. Run the scratch arm as its own arm with the same "
                              "tune settings (e.g. -m arm=scratch,layerwise_supervised tune.lr=[...]).")


def _check_grid_key(key: str, values: Any, cfg: Any, with_lr: bool) -> None:
    example = "e.g. tune.grid={strategy.lr:[0.01,0.03],optim.weight_decay:[0,0.0001]}"
    root = key.split(".")[0]
    if root in FIXED or (root == "dataset" and key not in DATA_TUNABLE) or (key == "optim.lr" and with_lr):
        raise StagetrainError(
            f"tune.grid key {key!r} cannot be searched: {', '.join(FIXED)} define the job and the comparison, and "
            f"dataset.* the task it is judged on (only {', '.join(DATA_TUNABLE)} is tunable); optim.lr is tune.lr. "
            f"Search training settings instead, {example}.")
    if cfg is not None and not _has_key(cfg, key):
        owner = f" (strategy={_get(cfg, 'strategy.name')} has no such setting)" if root == "strategy" else ""
        raise StagetrainError(f"tune.grid key {key!r} is not a setting of this run{owner}: name one of its config "
                              "keys by its full dotted path, e.g. tune.grid={optim.weight_decay:[0,0.0001],"
                              "train.batch_size:[32,64]}.")
    if isinstance(values, (str, bytes)) or not hasattr(values, "__len__") or not len(values):
        raise StagetrainError(f"tune.grid.{key}={values!r} is not valid: give a non-empty list of values, {example}.")


_ABSENT = object()


def _get(cfg: Any, key: str) -> Any:
    """The value of the dotted ``key`` in ``cfg`` (a DictConfig or the typed settings), or
    ``_ABSENT`` when it names no setting."""
    node = cfg
    for part in key.split("."):
        if hasattr(node, "keys") and hasattr(node, "__getitem__"):
            node = node[part] if part in node.keys() else _ABSENT
        elif hasattr(node, "__dataclass_fields__") and part in node.__dataclass_fields__:
            node = getattr(node, part)
        else:
            node = _ABSENT
        if node is _ABSENT:
            return node
    return node


def _has_key(cfg: Any, key: str) -> bool:
    return _get(cfg, key) is not _ABSENT


def worst(metric: str, mode: str) -> float:
    """The value a failed job returns: worse than any real result, and never NaN
    (hydra-optuna-sweeper 1.3 crashes on a NaN: it tells Optuna the trial failed *with* the
    value, which Optuna refuses)."""
    return -math.inf if direction(metric, mode) == "max" else math.inf


def objective_value(info: dict[str, Any] | None, metric: str, mode: str) -> float:
    """The run's ``metric`` from run.json's ``final``; ``worst`` for a failed or stopped
    run, or one without that metric (a dry run)."""
    if not info or info.get("status") != "completed":
        return worst(metric, mode)
    value = (info.get("final") or {}).get(metric)
    if value is None or not math.isfinite(float(value)):
        return worst(metric, mode)
    return float(value)


def sweeper_directions(hydra_cfg: Any) -> list[str]:
    """The directions a sweeper optimises (``hydra.sweeper.direction``), as max/min; empty
    for a sweeper without one (basic)."""
    sweeper = getattr(hydra_cfg, "sweeper", None)
    raw = sweeper.get("direction") if sweeper is not None and hasattr(sweeper, "get") else None
    if raw is None:
        return []
    values = [raw] if isinstance(raw, str) or not hasattr(raw, "__iter__") else list(raw)
    return ["max" if "max" in str(v).lower() else "min" for v in values]


def _sweeper_target(hydra_cfg: Any) -> str:
    """The sweeper's ``_target_`` (its class path), or "" without one."""
    return str(getattr(getattr(hydra_cfg, "sweeper", None), "get", lambda *_: "")("_target_") or "")


def is_search(hydra_cfg: Any) -> bool:
    """Whether a sweep searches (a sweeper that optimises, e.g. Optuna) rather than compares
    arms: only a search selects one job; a comparison's "best" job is a lucky seed."""
    target = _sweeper_target(hydra_cfg)
    return bool(sweeper_directions(hydra_cfg)) or "optuna" in target.lower()


def check_sweeper(hydra_cfg: Any, metric: str, mode: str) -> None:
    """Refuse a sweeper optimising the other way than ``objective`` (a maximising sweeper
    given val/loss would search for the worst setting)."""
    dirs = sweeper_directions(hydra_cfg)
    want = direction(metric, mode)
    if len(dirs) > 1:
        raise StagetrainError(
            f"hydra.sweeper.direction has {len(dirs)} directions; stagetrain returns one objective "
            f"(objective.metric={metric}). Give one direction: hydra.sweeper.direction={want}imize.")
    if dirs and dirs[0] != want:
        raise StagetrainError(
            f"hydra.sweeper.direction={dirs[0]}imize, but objective.metric={metric} gets better when it "
            f"goes {'up' if want == 'max' else 'down'} (objective.mode={mode}). Use "
            f"hydra.sweeper.direction={want}imize, or objective.mode={dirs[0]} if that is what you mean.")


def prepare_sweeper(hydra_cfg: Any, subdir: str, resume: str) -> None:
    """An Optuna search with SQLite storage: create the folder the database goes in (the
    sweep directory does not exist yet when the study opens), and refuse continuing such a
    search into job folders named by job number alone: a second invocation numbers its
    trials from 0 again, and resume=auto would take an earlier trial's result for a new one.
    The storage itself is checked first (``check_storage``)."""
    sweeper = getattr(hydra_cfg, "sweeper", None)
    storage = sweeper.get("storage") if sweeper is not None and hasattr(sweeper, "get") else None
    if not storage:
        return
    if resume != "never" and "${" in subdir and subdir.strip() == "${hydra.job.num}":
        raise StagetrainError(
            "Continuing an Optuna search (resume=auto) needs job folders that a new invocation does "
            "not reuse: add 'hydra.sweep.subdir=${hydra.job.num}_${stagetrain_uid:}' (as the first "
            "invocation should have). Otherwise trial 0 of this invocation would find trial 0 of the "
            "last one completed and report its result for other parameters.")
    database = check_storage(str(storage))
    if database is not None:
        from stagetrain.runs.runlock import fs_error

        try:
            database.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise fs_error(database.parent, "create the folder of hydra.sweeper.storage", e) from None


SQLITE_MAGIC = b"SQLite format 3\x00"


def check_storage(storage: str) -> Any:
    """``hydra.sweeper.storage`` checked before the study opens: a URL SQLAlchemy reads with a
    driver that is installed; for SQLite, the database file (returned as a Path; None for other
    databases and in-memory SQLite) is a SQLite database or absent or empty, and its folder can
    be written. Other databases are reached only when the study opens."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    where = f"hydra.sweeper.storage={storage}"
    try:
        url = make_url(storage)
        dialect = url.get_dialect()
        driver = getattr(dialect, "import_dbapi", None) or getattr(dialect, "dbapi", None)
        if callable(driver):
            driver()
    except ImportError as e:
        raise StagetrainError(f"{where}: its database driver is not installed ({e}); install it, or use a "
                              "sqlite:/// URL.") from None
    except NoSuchModuleError:  # an ArgumentError too: first
        raise StagetrainError(f"{where}: no database driver for '{storage.split(':', 1)[0]}' is installed "
                              "(SQLAlchemy knows sqlite, postgresql, mysql, ...); use a sqlite:/// URL.") from None
    except ArgumentError:
        raise StagetrainError(f"{where} is not a database URL: give e.g. 'hydra.sweeper.storage=sqlite:///"
                              "${hydra.sweep.dir}/optuna.db' (SQLite, a file in the sweep directory).") from None
    if url.get_backend_name() == "sqlite" and url.host:
        raise StagetrainError(f"{where} names a host ({url.host}); a SQLite URL names a file after three slashes: "
                              f"sqlite:///{url.host}{'/' + url.database if url.database else ''} (relative) or "
                              "sqlite:////abs/path/optuna.db (absolute).")
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return None
    return _check_sqlite_file(Path(url.database).expanduser(), where)


def _check_sqlite_file(path: Path, where: str) -> Path:
    """An existing SQLite database must be one (read through the gate: a FIFO or a device is
    refused unread); a new one needs a folder this process may create and write."""
    import os

    from stagetrain.core import userfile
    from stagetrain.runs import runlock

    if os.path.lexists(path):
        with userfile.open_file(path, where, "data") as f:
            head = f.read(len(SQLITE_MAGIC))
        if head and head != SQLITE_MAGIC:
            raise StagetrainError(f"{where}: {path} is not a SQLite database (it starts with {head[:8]!r}, not "
                                  "'SQLite format 3'); Optuna would fail on it. Name a new file or the database "
                                  "of an earlier search.")
        if not (os.access(path.parent, os.W_OK | os.X_OK) and os.access(path, os.W_OK)):
            cause = ("is on a read-only file system" if os.statvfs(path.parent).f_flag & os.ST_RDONLY
                     else "may not be written by you")
            raise StagetrainError(f"{where}: {path} {cause}; a search writes every trial into its database (and "
                                  "SQLite a journal next to it). Copy it to a writable folder and name the copy.")
        return path
    folder = runlock.nearest_existing(path.parent)
    cause = ("is not a folder" if not folder.is_dir() else "is on a read-only file system"
             if os.statvfs(folder).f_flag & os.ST_RDONLY else "may not be written by you"
             if not os.access(folder, os.W_OK | os.X_OK) else "")
    if cause:
        raise StagetrainError(f"{where}: the database {path} cannot be created: {folder} {cause}. Name a file in "
                              "a writable folder, e.g. 'hydra.sweeper.storage=sqlite:///${hydra.sweep.dir}/optuna.db'.")
    return path


def quiet_optuna(hydra_cfg: Any) -> None:
    """Keep the Optuna sweeper's libraries off the terminal: alembic's plugin set-up lines
    (``setup plugin alembic...``, INFO, at import) and Optuna's own study-created lines (its
    own handler). Imports them here, before the sweeper does, so the levels hold."""
    import logging

    target = _sweeper_target(hydra_cfg)
    if "optuna" not in target.lower():
        return
    for name in ("alembic", "sqlalchemy"):
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        import optuna
    except ImportError:
        return  # Hydra names the missing plugin itself
    optuna.logging.set_verbosity(optuna.logging.WARNING)


def selected(rows: list[dict[str, Any]], metric: str, mode: str) -> dict[str, Any] | None:
    """The completed row with the best ``metric`` (read from each run's run.json ``final``),
    as a search selects it: on validation only. None when no run completed."""
    from stagetrain.runread import read_info

    best, best_value = None, None
    sign = 1.0 if direction(metric, mode) == "max" else -1.0
    for row in rows:
        if row.get("status") != "completed":
            continue
        value = read_info(Path(row["run"]))["final"].get(metric)  # through the gate; never raises
        if value is not None and math.isfinite(float(value)) and (best is None or sign * value > sign * best_value):
            best, best_value = row, float(value)
    return None if best is None else {**best, metric: best_value}
