"""``compare.scratch=true``: every staged run gets its scratch control at equal compute.

After a staged run completes, a scratch run of the architecture it ended with
(``strategy.arch_from``: its model.safetensors), from random initial weights, with the same
data, seed, optimizer and schedule settings, is given exactly the staged run's training
FLOPs (``strategy.flops``: a FLOP-bounded stage, so its epochs follow from the budget and
the LR schedule spans what the budget buys; it stops within one step of the budget). It
runs in ``<run dir>/control/``, a run directory of its own; the staged run's run.json
records it under ``control``. The sweep summary and ``stagetrain-report`` find it as a run
of its own, and ``compare.with_intervals`` pairs each arm with its own controls.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

log = logging.getLogger("stagetrain")
SUBDIR = "control"
CONTROL = "scratch"  # the strategy every staged run is compared against


def control_after(cfg: Any, info: dict[str, Any], run_dir: Path) -> None:
    """``compare.scratch=true`` on a completed staged run (not a control itself, not a dry
    run): train its equal-FLOPs control (``run_control``)."""
    if (OmegaConf.select(cfg, "compare.scratch", default=False) and info.get("status") == "completed"
            and info.get("strategy") != CONTROL and not info.get("dry_run")):
        run_control(info, run_dir)


def run_control(info: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """Train the equal-FLOPs scratch control of the completed run ``info`` (in ``run_dir``);
    returns what the staged run's run.json records under ``control``. A failed control is
    recorded and logged; it never fails the staged run."""
    from stagetrain.core.errors import StagetrainError
    from stagetrain.core.trust import UntrustedCode
    from stagetrain.runs.resume import saved_config
    from stagetrain.runs.rundir import RunDir
    from stagetrain.runs.runner import train

    control_dir = Path(run_dir) / SUBDIR
    saved_config(info, Path(run_dir) / "run.json")  # the record may be a file (a completed run resumed)
    cfg = OmegaConf.create(info["config"])
    cfg.strategy = {"name": CONTROL, "epochs": None, "flops": float(info["flops"]),
                    "arch_from": str(Path(run_dir).resolve())}
    cfg.compare.scratch = False
    cfg.resume = "auto"  # the staged run re-run with resume=auto continues or skips its control too
    log.info("compare.scratch: training the scratch control of %s for %.4g FLOPs in %s",
             run_dir, float(info["flops"]), control_dir)
    try:
        ctrl = train(cfg, control_dir, vouch=False)  # the launch vouched (cli._train); the record is a file
        record = {"run_dir": str(control_dir.resolve()), "status": ctrl.get("status"), "flops": ctrl.get("flops"),
                  "final": ctrl.get("final", {}), "stages": [s.get("epochs") for s in ctrl.get("stages", [])]}
    except UntrustedCode:
        raise  # a file named code: the command is refused, nothing recorded
    except (StagetrainError, RuntimeError, ValueError, OSError) as e:
        log.error("The scratch control of %s failed: %s", run_dir, e)
        record = {"run_dir": str(control_dir.resolve()), "status": "failed", "error": str(e)}
    info["control"] = record
    RunDir(Path(run_dir)).write_run_json(info)
    return record
