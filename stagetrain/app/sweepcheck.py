"""Every job of a sweep checked before any launcher starts one (local, joblib, SLURM).

``stagetrain -m hydra/launcher=slurm strategy=layerwise,grow,finetune seed=0,1,2`` would
otherwise submit nine jobs of which three fail on the cluster (``strategy=finetune needs
strategy.source=...``). Here the sweep is expanded as Hydra's basic sweeper will expand it
(``hydra.sweeper.params`` of an experiment, then the command line), each combination is
composed the way its job will be and run through ``config.validate``; if any fails, the
whole sweep is refused in one paragraph listing the failing combinations, before Hydra
creates the sweep directory. Composition is Hydra's (no torch); a few hundred
combinations take a few seconds.

An optimising sweeper (Optuna) draws its jobs as it goes: only the command line's own
choices are checked (``overrides._variants``), as before.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from stagetrain.app.hydra_private import BASIC_SWEEPER
from stagetrain.core.errors import StagetrainError

SHOWN = 6  # combinations named per distinct failure; the rest are counted


def _is_hydra(key: str) -> bool:
    return key == "hydra" or key.startswith(("hydra.", "hydra/"))


def sweep_jobs(cfg: DictConfig, parsed: list[Any]) -> list[list[str]] | None:
    """The override lists of a basic sweep's jobs, as Hydra will compose them (the command
    line's ``hydra`` overrides, then the job's own); None for another sweeper."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from stagetrain.app.hydra_private import split_sweep

    if OmegaConf.select(cfg, "hydra.sweeper._target_", default=None) != BASIC_SWEEPER:
        return None
    params = OmegaConf.select(cfg, "hydra.sweeper.params", default=None) or {}
    own = [o.input_line for o in parsed if _is_hydra(o.key_or_group)]
    task = [f"{k}={v}" for k, v in params.items()] + [o.input_line for o in parsed if not _is_hydra(o.key_or_group)]
    try:
        batches = split_sweep(OverridesParser.create().parse_overrides(task))
    except Exception:  # noqa: BLE001 - Hydra reports a sweep it cannot expand
        return None
    return [own + job for batch in batches for job in batch]


def check_sweep(compose: Callable[[list[str]], DictConfig], jobs: list[list[str]], swept: set[str],
                validate: Callable[[DictConfig], None]) -> int:
    """Compose and validate every job; raise one StagetrainError naming the failing
    combinations (by their swept values), grouped by message. Returns how many were checked."""
    failures: dict[str, list[str]] = {}
    for num, job in enumerate(jobs):
        try:
            validate(compose(job))
        except Exception as e:  # noqa: BLE001 - a StagetrainError, or Hydra's refusal of a value
            shown = " ".join(o for o in job if o.lstrip("+~").split("=", 1)[0] in swept) or " ".join(job)
            message = str(e) if isinstance(e, StagetrainError) else (str(e).strip() or type(e).__name__).splitlines()[0]
            failures.setdefault(message, []).append(f"#{num} {shown}")
    if failures:
        failed = sum(len(v) for v in failures.values())
        parts = []
        for message, combos in failures.items():
            more = f" and {len(combos) - SHOWN} more" if len(combos) > SHOWN else ""
            parts.append(f"{', '.join(combos[:SHOWN])}{more}: {message.rstrip('.')}.")
        raise StagetrainError(
            f"The sweep was not started: {failed} of {len(jobs)} combinations would fail. "
            + " ".join(parts)
            + " Fix the values or leave these combinations out; nothing was submitted or written.")
    return len(jobs)


def swept_keys(jobs: list[list[str]]) -> set[str]:
    """Keys whose value differs between the jobs (what names a combination)."""
    seen: dict[str, set[str]] = {}
    for job in jobs:
        for o in job:
            key, _, value = o.lstrip("+~").partition("=")
            seen.setdefault(key, set()).add(value)
    return {k for k, v in seen.items() if len(v) > 1}


def composer(loader: Any, config_name: str) -> Callable[[list[str]], DictConfig]:
    """A job's config as Hydra composes it, fast: the defaults list (the slow part, ~0.1 s)
    is composed once per distinct set of group choices; the job's value overrides are then
    applied to a copy as Hydra applies them (``hydra_private.apply_overrides``)."""
    import copy

    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.types import RunMode

    from stagetrain.app.hydra_private import apply_overrides

    parser = OverridesParser.create()
    bases: dict[tuple[str, ...], DictConfig] = {}

    def compose(job: list[str]) -> DictConfig:
        parsed = parser.parse_overrides(job)
        values = [o for o in parsed if isinstance(o.value(), dict) or not loader.repository.group_exists(o.key_or_group)]
        groups = tuple(o.input_line for o in parsed if o not in values)
        if groups not in bases:  # without Hydra's own node, which validation does not read
            bases[groups] = loader.load_configuration(config_name, list(groups), RunMode.RUN)
            with open_dict(bases[groups]):
                bases[groups].pop("hydra", None)
        cfg = copy.deepcopy(bases[groups])
        apply_overrides([o for o in values if not _is_hydra(o.key_or_group)], cfg)
        return cfg

    return compose


def check_jobs(compose: Callable[[list[str]], DictConfig], cfg: DictConfig, parsed: list[Any],
               validate: Callable[[DictConfig], None]) -> None:
    """``check_sweep`` on a basic sweep's jobs (``cfg``: the first job's full composition)."""
    jobs = sweep_jobs(cfg, parsed)
    if jobs:
        check_sweep(compose, jobs, swept_keys(jobs), validate)
