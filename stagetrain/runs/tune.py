"""``tune.lr=[...]`` / ``tune.grid={key: [...]}``: one job becomes a search, selected on validation.

Each setting (the product of ``tune.lr``, as ``optim.lr``, and ``tune.grid``'s lists) trains a
complete trial run in ``<run dir>/tune/lr=<value>/`` (or ``key=value,...``: the job's config
with the setting applied; ``resume=auto``, so a re-run skips finished trials). The trial with
the best ``objective.metric`` -- a validation metric; the test split never takes part in
the choice -- is selected. The job's own run.json reports the selected trial's metrics
(the test accuracy to quote), the whole search's training FLOPs and seconds (every arm of a
comparison tuned over the same grid spends its search's budget, visible in the summary),
and under ``tune`` every trial with its validation and test metrics.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("stagetrain")
SUBDIR = "tune"
NAME_MAX = 120  # characters of a trial folder's name (file systems allow 255 bytes)


def is_trial(run: Path) -> bool:
    """Whether ``run`` is a trial of a search (its parent job's run.json summarises it)."""
    run = Path(run)
    return run.parent.name == SUBDIR and (run.parent.parent / "run.json").is_file()


def settings(cfg: DictConfig) -> list[dict[str, Any]]:
    """Every trial's settings: the product of ``tune.lr`` (as ``optim.lr``) and ``tune.grid``."""
    axes = ([("optim.lr", [float(v) for v in cfg.tune.lr])] if cfg.tune.lr else []) + [
        (str(k), list(OmegaConf.to_container(v) if OmegaConf.is_config(v) else v)) for k, v in (cfg.tune.grid or {}).items()]
    return [dict(zip([k for k, _ in axes], combo, strict=True)) for combo in itertools.product(*[v for _, v in axes])]


def trial_name(setting: dict[str, Any]) -> str:
    """The trial's folder: ``lr=<v>`` for a learning-rate search, else ``key=value,...``; every
    value written exactly (two values never share a folder), no path separators or spaces, and
    a long name cut with a digest of the whole."""
    if list(setting) == ["optim.lr"]:
        name = f"lr={_text(setting['optim.lr'])}"
    else:
        name = ",".join(f"{k}={_text(v)}" for k, v in setting.items())
    name = name.replace("/", "_").replace("\\", "_").replace(" ", "").replace("..", "_.")
    if len(name) > NAME_MAX:
        name = f"{name[:NAME_MAX - 13]}-{hashlib.sha1(name.encode()).hexdigest()[:12]}"
    return name


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (list, dict)) or OmegaConf.is_config(value):
        plain = OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
        return json.dumps(plain, separators=(",", ":"))
    return str(value)


def trial_config(cfg: DictConfig, setting: dict[str, Any]) -> DictConfig:
    """The job's config (resolved) with the trial's settings, untuned and uncontrolled; a value
    of another kind than the key's (text for a number, a list for a scalar) is refused."""
    from stagetrain.core.errors import StagetrainError

    trial_cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    trial_cfg.tune.lr, trial_cfg.tune.grid, trial_cfg.resume = [], None, "auto"
    trial_cfg.compare.scratch = False
    for key, value in setting.items():
        current = OmegaConf.select(trial_cfg, key)
        if current is not None and _kind(value) != _kind(current):
            raise StagetrainError(f"tune.grid.{key}: the value {value!r} is not valid for {key}, which holds "
                                  f"{_kind(current)} values (now {current!r}).")
        OmegaConf.update(trial_cfg, key, value, merge=False)
    return trial_cfg


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, (int, float)):
        return "number"
    if OmegaConf.is_config(value) or isinstance(value, (list, dict)):
        return "list/mapping"
    return "text"


def _trial(trial_cfg: DictConfig, setting: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    from stagetrain.core.errors import StagetrainError
    from stagetrain.runs.runner import train

    path = run_dir / SUBDIR / trial_name(setting)
    _check_not_stale(trial_cfg, path)
    try:
        info = train(trial_cfg, path)
    except (StagetrainError, RuntimeError) as e:  # a diverging trial is a result, not the end of the search
        log.warning("tune: trial %s failed: %s", trial_name(setting), e)
        info = {"status": "failed", "error": str(e), "final": {}, "flops": 0.0, "seconds": 0.0}
    return {**setting, "run_dir": str(path.resolve()), "info": info}


def _check_not_stale(trial_cfg: DictConfig, path: Path) -> None:
    """A trial folder that already holds a run is resumed only if that run has this trial's settings."""
    from stagetrain.core.errors import StagetrainError
    from stagetrain.runs.resume import changed_keys
    from stagetrain.runs.rundir import RunDir

    if not RunDir(path).has_run():
        return
    saved = RunDir(path).read_run_json().get("config")
    changed = changed_keys(trial_cfg, saved) if isinstance(saved, dict) else ["its config (unreadable)"]
    if changed:
        raise StagetrainError(
            f"tune: the trial folder {path} holds a run with other settings ({', '.join(changed[:6])}): a search "
            "resumes only its own trials. Run this search in a new run directory (or delete that folder).")


def run_search(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Validate every trial, train them, select on validation, write and return the job's run.json."""
    from stagetrain.core.errors import StagetrainError, run_exists_error
    from stagetrain.runs.config import validate
    from stagetrain.runs.rundir import RunDir
    from stagetrain.runs.search import direction, objective_value

    validate(cfg)  # the job's own settings (tune included), before any trial
    rundir = RunDir(Path(run_dir))
    if cfg.resume == "never" and (rundir.has_run() or any(Path(run_dir, SUBDIR).glob("*/run.json"))):
        raise run_exists_error(run_dir)  # an earlier search's job, or trials of one that stopped
    grid = settings(cfg)
    names = [trial_name(setting) for setting in grid]
    if len(set(names)) < len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise StagetrainError(f"tune: the search lists the same setting twice ({', '.join(twice)}): give each key "
                              "distinct values.")
    configs = [trial_config(cfg, setting) for setting in grid]
    for trial_cfg in configs:  # a bad value is refused before the first trial trains
        validate(trial_cfg)
    metric, mode = str(cfg.objective.metric), str(cfg.objective.mode)
    trials = [_trial(c, setting, Path(run_dir)) for c, setting in zip(configs, grid, strict=True)]
    scored = [(objective_value(t["info"], metric, mode), t) for t in trials if t["info"].get("status") == "completed"]
    if not scored:
        raise StagetrainError(f"tune: every trial of {_describe(cfg)} failed; see {Path(run_dir) / SUBDIR}.")
    sign = 1.0 if direction(metric, mode) == "max" else -1.0
    best = max(scored, key=lambda s: sign * s[0])[1]
    keys = list(grid[0])
    info = dict(best["info"])
    info["config"] = {**info["config"], "tune": {"lr": [float(v) for v in cfg.tune.lr],
                                                 "grid": _grid(cfg)}}
    info.update(run_dir=str(Path(run_dir).resolve()), flops=sum(float(t["info"].get("flops") or 0) for t in trials),
                seconds=round(sum(float(t["info"].get("seconds") or 0) for t in trials), 3))
    info["tune"] = {"metric": metric, "mode": direction(metric, mode), "trials": len(trials), "keys": keys,
                    "selected": {**{k: best[k] for k in keys}, "run_dir": best["run_dir"]},
                    "search": [{**{k: t[k] for k in keys}, "status": t["info"].get("status"),
                                "run_dir": t["run_dir"], "flops": t["info"].get("flops"),
                                **{k: v for k, v in (t["info"].get("final") or {}).items()}} for t in trials]}
    info["warnings"] = [*(info.get("warnings") or []), *edge_warnings(grid, {k: best[k] for k in keys})]
    rundir.path.mkdir(parents=True, exist_ok=True)
    rundir.write_run_json(info)
    log.info("tune: selected %s by %s (%s) over %d trials", trial_name({k: best[k] for k in keys}), metric,
             direction(metric, mode), len(trials))
    return info


def edge_warnings(grid: list[dict[str, Any]], selected: dict[str, Any]) -> list[str]:
    """A numeric key (3 or more values) whose selected value is the grid's smallest or largest:
    the optimum may lie beyond the grid, so the arm may be under-tuned (logged and returned)."""
    out = []
    for key, value in selected.items():
        values = sorted({s[key] for s in grid if isinstance(s[key], int | float) and not isinstance(s[key], bool)})
        if len(values) >= 3 and value in (values[0], values[-1]):
            side = "largest" if value == values[-1] else "smallest"
            out.append(f"tune: the selected {key}={_text(value)} is the {side} value searched "
                       f"({_text(values[0])} ... {_text(values[-1])}): the best setting may lie beyond the grid.")
            log.warning(out[-1])
    return out


def _describe(cfg: DictConfig) -> str:
    parts = ([f"tune.lr={list(cfg.tune.lr)}"] if cfg.tune.lr else []) + (
        [f"tune.grid={_grid(cfg)}"] if cfg.tune.grid else [])
    return " ".join(parts)


def _grid(cfg: DictConfig) -> dict[str, Any]:
    grid = cfg.tune.grid
    return OmegaConf.to_container(grid) if OmegaConf.is_config(grid) else dict(grid or {})
