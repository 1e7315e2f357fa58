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
from stagetrain.core.errors import StagetrainError, no_run_error, run_exists_error
from stagetrain.runs.config import validate
from stagetrain.runs.rundir import RunDir

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
        saved_config(info, rundir.run_json)  # a file: plain values only, before OmegaConf resolves anything
        start.cfg = _config_for_resume(cfg, info, rundir)
        start.settings = validate_saved(start.cfg, rundir.run_json)  # before anything is read or rewritten
        start.state = latest_state(rundir)
    if write_config:
        (rundir.path / ".hydra").mkdir(exist_ok=True)
        (rundir.path / ".hydra" / "config.yaml").write_text(OmegaConf.to_yaml(start.cfg))
    return start


def saved_config(info: dict[str, Any], where: Any) -> None:
    """A run's saved config, as a resume reads it from run.json: a mapping of plain values that
    stagetrain wrote resolved. An interpolation (``${oc.env:TOKEN}``) there is not ours and
    would copy the environment into the run's files: refused, naming the key."""
    config = info.get("config")
    if not isinstance(config, dict):
        raise StagetrainError(f"Could not resume from {where}: its 'config' is "
                              f"{'missing' if config is None else 'a ' + type(config).__name__}, not the "
                              "mapping stagetrain writes. Restore run.json (its config is also in .hydra/config.yaml).")
    stack = [("", config)]
    while stack:
        prefix, node = stack.pop()
        for key, value in node.items() if isinstance(node, dict) else enumerate(node):
            if isinstance(value, dict | list):
                stack.append((f"{prefix}{key}.", value))
            elif isinstance(value, str) and "${" in value:
                raise StagetrainError(f"Could not resume from {where}: its config holds an interpolation at "
                                      f"{prefix}{key} ({value[:80]!r}); stagetrain saves configs resolved, so this "
                                      "run.json was altered. Restore it (its config is also in .hydra/config.yaml).")


def validate_saved(cfg: DictConfig, where: Any) -> Any:
    """``validate`` on a saved config: OmegaConf's own errors become one paragraph naming run.json."""
    from omegaconf.errors import OmegaConfBaseException

    try:
        return validate(cfg)
    except OmegaConfBaseException as e:
        raise StagetrainError(f"Could not resume from {where}: its saved config does not fit this version of "
                              f"stagetrain ({type(e).__name__}: {str(e).splitlines()[0][:200]}).") from None


def _config_for_resume(cfg: DictConfig, info: dict[str, Any], rundir: RunDir) -> DictConfig:
    """The interrupted run's own config; the command line may only change RESUME_FREE_KEYS."""
    saved = OmegaConf.create(info["config"])
    typed = typed_overrides()
    changed = changed_keys(cfg, info["config"], typed)
    if changed and (typed is not None or cfg.resume == "auto"):  # typed, or the same command again: news
        log.warning("Resuming %s with its saved config; ignoring the differing values of: %s",
                    rundir.path, ", ".join(changed))
    else:
        log.info("Resuming %s with its saved config.", rundir.path)
    for key in RESUME_FREE_KEYS:
        saved[key] = cfg[key]
    if OmegaConf.select(saved, "optim.fused") is None:  # saved before optim.fused existed: it ran unfused
        saved.optim.fused = False
    return saved


def changed_keys(cfg: DictConfig, saved: dict[str, Any], overrides: list[str] | None = None) -> list[str]:
    """The settings (dotted keys) in which ``cfg`` differs from a run's saved config, apart
    from RESUME_FREE_KEYS. With ``overrides`` (the launch's command line, ``key=value``
    strings), only the keys the user typed count, each named as typed (``strategy=grow``
    covers every ``strategy.*`` key); the defaults of a bare ``resume=<dir>`` are not news."""
    current = OmegaConf.to_container(cfg, resolve=True)
    diff = [k for k in _diff_keys(current, saved) if k.split(".")[0] not in RESUME_FREE_KEYS]
    if overrides is None:
        return sorted(diff)
    typed = [_override_key(o) for o in overrides]
    return sorted({t for k in diff for t in typed if t in GLOBAL_GROUPS or k == t or k.startswith(t + ".")})


GLOBAL_GROUPS = ("experiment", "arm")  # groups whose options set keys anywhere (# @package _global_)


def typed_overrides() -> list[str] | None:
    """This launch's command-line overrides (Hydra's), or None outside a Hydra launch."""
    try:
        from hydra.core.hydra_config import HydraConfig

        return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else None
    except Exception:  # noqa: BLE001 - no usable Hydra context: compare everything
        return None


def _override_key(override: str) -> str:
    """``+a.b=1`` -> ``a.b``; ``~a`` -> ``a``; ``model=cnn`` -> ``model``."""
    return override.lstrip("+~").split("=", 1)[0].split("@", 1)[0].replace("/", ".").strip()


def _diff_keys(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in set(a) | set(b):
            out += _diff_keys(a.get(key), b.get(key), f"{prefix}{key}.")
        return out
    return [] if a == b else [prefix.rstrip(".")]
