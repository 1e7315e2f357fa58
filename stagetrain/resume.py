"""Starting or continuing a run in its directory: the one place that decides.

A new run needs an empty directory (``resume=never``); ``resume=auto`` or ``<run dir>``
continues one: the run's own saved config (the command line may change only
RESUME_FREE_KEYS), and the newest readable checkpoint (``checkpoint.resume``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, OmegaConf

from stagetrain.checkpoint.resume import latest_state
from stagetrain.config import validate
from stagetrain.errors import no_run_error, run_exists_error
from stagetrain.rundir import RunDir

log = logging.getLogger("stagetrain")

# keys that may differ between an interrupted run and its resumption
RESUME_FREE_KEYS = {"resume", "progress", "dry_run", "plots", "trust_targets"}  # trust: vouched by the launch


@dataclass
class Start:
    cfg: DictConfig  # the config to run (a resumed run's own)
    state: dict[str, Any] | None = None  # the checkpoint to continue from
    previous: dict[str, Any] = field(default_factory=dict)  # the run.json found, if any
    completed: bool = False  # the run already completed: nothing to do
    settings: Any = None  # the resumed config, validated (None: the launch's own config)


def open_run(cfg: DictConfig, rundir: RunDir, write_config: bool) -> Start:
    """What this launch does in ``rundir``; raises StagetrainError for a refused launch."""
    if not rundir.has_run():
        if cfg.resume not in ("never", "auto"):
            raise no_run_error(cfg.resume)
        return Start(cfg)
    if cfg.resume == "never":
        raise run_exists_error(rundir.path)
    info = rundir.read_run_json()
    if info.get("status") == "completed":
        log.info("Run %s already completed; nothing to do (resume=%s).", rundir.path, cfg.resume)
        return Start(cfg, previous=info, completed=True)
    start = Start(cfg, previous=info)
    if info.get("status") == "failed" and not rundir.resume_candidates():
        log.info("%s failed before its first checkpoint; starting it again.", rundir.path)
    else:
        start.cfg = _config_for_resume(cfg, info, rundir)
        start.settings = validate(start.cfg)  # before anything is read or rewritten for it
        start.state = latest_state(rundir)
    if write_config:
        (rundir.path / ".hydra").mkdir(exist_ok=True)
        (rundir.path / ".hydra" / "config.yaml").write_text(OmegaConf.to_yaml(start.cfg))
    return start


def _config_for_resume(cfg: DictConfig, info: dict[str, Any], rundir: RunDir) -> DictConfig:
    """The interrupted run's own config; the command line may only change RESUME_FREE_KEYS."""
    saved = OmegaConf.create(info["config"])
    changed = changed_keys(cfg, info["config"])
    if changed and cfg.resume == "auto":  # the same command line again: differences are news
        log.warning("Resuming %s with its saved config; ignoring the differing values of: %s",
                    rundir.path, ", ".join(changed))
    else:
        log.info("Resuming %s with its saved config.", rundir.path)
    for key in RESUME_FREE_KEYS:
        saved[key] = cfg[key]
    if OmegaConf.select(saved, "optim.fused") is None:  # saved before optim.fused existed: it ran unfused
        saved.optim.fused = False
    return saved


def changed_keys(cfg: DictConfig, saved: dict[str, Any]) -> list[str]:
    """The settings (dotted keys) in which ``cfg`` differs from a run's saved config, apart
    from RESUME_FREE_KEYS."""
    current = OmegaConf.to_container(cfg, resolve=True)
    return sorted(k for k in _diff_keys(current, saved) if k.split(".")[0] not in RESUME_FREE_KEYS)


def _diff_keys(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in set(a) | set(b):
            out += _diff_keys(a.get(key), b.get(key), f"{prefix}{key}.")
        return out
    return [] if a == b else [prefix.rstrip(".")]
