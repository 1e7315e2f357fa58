"""The ``stagetrain`` console script: a thin Hydra entry point around ``run.train``."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from stagetrain.config import register_configs
from stagetrain.errors import StagetrainError
from stagetrain.plan import StopReason
from stagetrain.rundir import RunDir, new_run_dir_name

log = logging.getLogger("stagetrain")
EXIT_STOPPED = 3  # stopped by a signal after checkpointing: resumable, requeue me


def _run_dir(resume: str, strategy: str) -> str:
    """hydra.run.dir: the directory given by resume=<dir>, else a new unique one."""
    return new_run_dir_name(strategy) if resume in ("never", "auto") else resume


OmegaConf.register_new_resolver("stagetrain_run_dir", _run_dir, replace=True, use_cache=True)
OmegaConf.register_new_resolver(
    "stagetrain_uid", lambda: new_run_dir_name("x").rsplit("_", 1)[1], replace=True, use_cache=True)
register_configs()


def print_summary(info: dict[str, Any]) -> None:
    from rich.table import Table

    from stagetrain.progress import make_console

    table = Table(title=f"stagetrain: {info['strategy']} - {info['status']}")
    for col in ("stage", "name", "epochs", "params", "FLOPs", "seconds", "metric", "stop"):
        table.add_column(col)
    for s in info["stages"]:
        metric = s["final"].get("val/acc")
        metric = f"val/acc {metric:.4f}" if metric is not None else f"val/loss {s['final'].get('val/loss', float('nan')):.4f}"
        table.add_row(str(s["stage"]), s["name"], str(s["epochs"]), f"{s['params']:,}",
                      f"{s['flops']:.3g}", f"{s['seconds']:.1f}", metric, s["stop_reason"])
    console = make_console()
    console.print(table)
    final = "  ".join(f"{k}={v:.4f}" for k, v in info["final"].items())
    console.print(f"final: {final}")
    console.print(f"total: {info.get('flops', 0):.3g} FLOPs, {info.get('seconds', 0):.1f} s training")
    reason = info.get("stop_reason")
    if reason:
        console.print(f"stopped: {reason} ({StopReason(reason).message})")
    console.print(f"run directory: {info['run_dir']}")


@hydra.main(version_base="1.3", config_path="pkg://stagetrain.conf", config_name="config")
def hydra_main(cfg: DictConfig) -> dict[str, Any] | None:
    from stagetrain.engine import StopRequested
    from stagetrain.run import train

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    try:
        info = train(cfg, run_dir)
    except (StagetrainError, StopRequested) as e:
        RunDir(run_dir).remove_if_unused()
        stopped = isinstance(e, StopRequested)
        message = (f"Stopped by {e} after writing a checkpoint; continue with resume=auto "
                   f"hydra.run.dir={run_dir}") if stopped else str(e)
        log.error("%s", message)
        if multirun:
            raise
        sys.exit(EXIT_STOPPED if stopped else 1)
    except BaseException:
        RunDir(run_dir).remove_if_unused()
        raise
    if info.get("dry_run"):
        RunDir(run_dir).remove_if_unused()
    elif not multirun:
        print_summary(info)
    return info


def main() -> None:
    hydra_main()


if __name__ == "__main__":
    main()
