"""``tune.lr=[...]``: one job becomes a search over learning rates, selected on validation.

Each value trains a complete trial run in ``<run dir>/tune/lr=<value>/`` (the job's config
with ``optim.lr`` set; ``resume=auto``, so a re-run skips finished trials). The trial with
the best ``objective.metric`` -- a validation metric; the test split never takes part in
the choice -- is selected. The job's own run.json reports the selected trial's metrics
(the test accuracy to quote), the whole search's training FLOPs and seconds (every arm of a
comparison tuned over the same grid spends its search's budget, visible in the summary),
and under ``tune`` every trial with its validation and test metrics.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("stagetrain")
SUBDIR = "tune"


def is_trial(run: Path) -> bool:
    """Whether ``run`` is a trial of a search (its parent job's run.json summarises it)."""
    run = Path(run)
    return run.parent.name == SUBDIR and (run.parent.parent / "run.json").is_file()


def _trial(cfg: DictConfig, lr: float, run_dir: Path) -> dict[str, Any]:
    from stagetrain.errors import StagetrainError
    from stagetrain.runner import train

    trial_cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    trial_cfg.optim.lr, trial_cfg.tune.lr, trial_cfg.resume = float(lr), [], "auto"
    trial_cfg.compare.scratch = False
    path = run_dir / SUBDIR / f"lr={float(lr):g}"
    try:
        info = train(trial_cfg, path)
    except (StagetrainError, RuntimeError) as e:  # a diverging trial is a result, not the end of the search
        log.warning("tune: trial optim.lr=%g failed: %s", lr, e)
        info = {"status": "failed", "error": str(e), "final": {}, "flops": 0.0, "seconds": 0.0}
    return {"optim.lr": float(lr), "run_dir": str(path.resolve()), "info": info}


def run_search(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Train every trial, select on validation, write and return the job's run.json."""
    from stagetrain.config import validate
    from stagetrain.errors import StagetrainError, run_exists_error
    from stagetrain.rundir import RunDir
    from stagetrain.search import direction, objective_value

    validate(cfg)  # the job's own settings (tune.lr included), before any trial
    rundir = RunDir(Path(run_dir))
    if cfg.resume == "never" and rundir.has_run():
        raise run_exists_error(run_dir)
    metric, mode = str(cfg.objective.metric), str(cfg.objective.mode)
    trials = [_trial(cfg, lr, Path(run_dir)) for lr in cfg.tune.lr]
    scored = [(objective_value(t["info"], metric, mode), t) for t in trials if t["info"].get("status") == "completed"]
    if not scored:
        raise StagetrainError(f"tune.lr={list(cfg.tune.lr)}: every trial failed; see {Path(run_dir) / SUBDIR}.")
    sign = 1.0 if direction(metric, mode) == "max" else -1.0
    best = max(scored, key=lambda s: sign * s[0])[1]
    info = dict(best["info"])
    info["config"] = {**info["config"], "tune": {"lr": [float(v) for v in cfg.tune.lr]}}
    info.update(run_dir=str(Path(run_dir).resolve()), flops=sum(float(t["info"].get("flops") or 0) for t in trials),
                seconds=round(sum(float(t["info"].get("seconds") or 0) for t in trials), 3))
    info["tune"] = {"metric": metric, "mode": direction(metric, mode), "trials": len(trials),
                    "selected": {"optim.lr": best["optim.lr"], "run_dir": best["run_dir"]},
                    "search": [{"optim.lr": t["optim.lr"], "status": t["info"].get("status"),
                                "run_dir": t["run_dir"], "flops": t["info"].get("flops"),
                                **{k: v for k, v in (t["info"].get("final") or {}).items()}} for t in trials]}
    rundir.path.mkdir(parents=True, exist_ok=True)
    rundir.write_run_json(info)
    log.info("tune: selected optim.lr=%g by %s (%s) over %d trials", best["optim.lr"], metric,
             direction(metric, mode), len(trials))
    return info
