"""The ``stagetrain`` console script: a thin Hydra entry point around ``run.train``."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from stagetrain.app.hydrawrites import guard_hydra_writes
from stagetrain.core.errors import StagetrainError
from stagetrain.core.plan import StopReason
from stagetrain.runs.config import register_configs

log = logging.getLogger("stagetrain")
EXIT_STOPPED = 3  # stopped by a signal after checkpointing: resumable, requeue me
EXIT_INTERRUPTED = 130  # Ctrl-C (SIGINT), as shells report it: checkpointed too, resumable


@dataclass
class Outcome:
    """What one command ended with (``execute``'s answer): exit code, run record, error message."""

    code: int | str | None = 0
    info: dict[str, Any] | None = None
    error: str | None = None


# stagetrain.runs.rundir imports torch (2+ s): imported on first use (a bad command line is refused without it)
def RunDir(path: Path) -> Any:  # noqa: N802 - stands in for the class
    from stagetrain.runs.rundir import RunDir as _RunDir

    return _RunDir(path)


def _run_dir(resume: str, strategy: str) -> str:
    """hydra.run.dir: the directory given by resume=<dir>, else a new one, created here
    (exclusively: concurrent launches never share it; removed again if nothing runs)."""
    from stagetrain.runs.rundir import reserve_run_dir

    return reserve_run_dir(strategy) if resume in ("never", "auto") else resume


def _uid() -> str:
    from stagetrain.runs.rundir import new_run_dir_name

    return new_run_dir_name("x").rsplit("_", 1)[1]


OmegaConf.register_new_resolver("stagetrain_run_dir", _run_dir, replace=True, use_cache=True)
OmegaConf.register_new_resolver("stagetrain_uid", _uid, replace=True, use_cache=True)


def _hydra_subdir(output_dir: str | None) -> str | None:
    """hydra.output_subdir: Hydra writes .hydra/ into a job's directory before the job runs;
    not into one that already holds a run (a sweep re-run: that run's files stay as they
    are), and only on rank 0 under torchrun."""
    if int(os.environ.get("RANK", "0")) != 0:
        return None
    if output_dir and (Path(output_dir) / "run.json").exists():
        return None
    return ".hydra"


OmegaConf.register_new_resolver("stagetrain_hydra_subdir", _hydra_subdir, replace=True)
register_configs()
guard_hydra_writes()


def print_summary(info: dict[str, Any]) -> None:
    from rich.table import Table

    from stagetrain.progress import make_console
    from stagetrain.runread import fmt

    table = Table(title=f"stagetrain: {info['strategy']} - {info['status']}")
    for col in ("stage", "name", "epochs", "trains", "params", "FLOPs", "seconds", "metric", "stop"):
        table.add_column(col, justify="left" if col in ("name", "metric", "stop") else "right")
    for s in info["stages"]:
        key = "val/acc" if s["final"].get("val/acc") is not None else "val/loss"
        metric = f"{key} {fmt(float(s['final'].get(key, float('nan'))))}"
        table.add_row(str(s["stage"]), s["name"], fmt(s["epochs"]), fmt(s.get("trainable_params", s["params"])),
                      fmt(s["params"]),
                      fmt(float(s["flops"])), fmt(float(s["seconds"])), metric, s["stop_reason"])
    console = make_console()
    console.print(table)
    final = "  ".join(f"{k}={fmt(float(v))}" for k, v in info["final"].items())
    console.print(f"final: {final}")
    console.print(f"total: {fmt(float(info.get('flops', 0)))} FLOPs, {fmt(float(info.get('seconds', 0)))} s training")
    reason = info.get("stop_reason")
    if reason:
        console.print(f"stopped: {reason} ({StopReason(reason).message})")
    control = info.get("control")
    if control:
        test = (control.get("final") or {}).get("test/acc")
        console.print(f"equal-FLOPs scratch control ({control['status']}): test/acc={fmt(test)}, "
                      f"{fmt(control.get('flops'))} FLOPs, in {control['run_dir']}")
    console.print(f"run directory: {info['run_dir']}")


def record_failure(run_dir: Path, cfg: DictConfig, message: str) -> dict[str, Any]:
    """A sweep job that failed: its run.json says so, for the summary and ``stagetrain-report``
    (one that failed before training gets a minimal one: status ``failed``, error, config;
    re-running the sweep with ``resume=auto`` starts it again from scratch)."""
    from stagetrain.runs import runlock

    if runlock.was_refused(run_dir):  # another process is writing this job: never write there
        return {"status": "failed", "run_dir": str(runlock.identity(run_dir)), "error": message,
                "stages": [], "final": {}}
    rundir = RunDir(run_dir)
    if rundir.has_run():  # train() recorded it, or the directory holds an earlier run: keep that
        try:
            info = rundir.read_run_json()
        except StagetrainError as e:  # unreadable: leave it as it is for the user to look at
            return {"status": "failed", "run_dir": str(run_dir), "error": f"{message} ({e})"}
        if not (info.get("status") == "failed" and not info.get("stages")):
            return info
    try:
        config = OmegaConf.to_container(cfg, resolve=True)
    except Exception:  # noqa: BLE001 - an unresolvable value may be the failure itself
        config = OmegaConf.to_container(cfg, resolve=False)
    info = {"status": "failed", "strategy": OmegaConf.select(cfg, "strategy.name", default="?"),
            "run_dir": str(Path(run_dir).resolve()), "error": message, "config": config,
            "stages": [], "final": {}}
    rundir.write_run_json(info)
    return info


def hydra_entry(outcome: Outcome) -> Callable[[], None]:
    """One command's ``@hydra.main`` (Hydra makes the job's directory, log, ``.hydra/``)."""

    @hydra.main(version_base="1.3", config_path="pkg://stagetrain.conf", config_name="config")
    def hydra_main(cfg: DictConfig) -> float:
        """One job; its record goes to ``outcome.info``. Returns the objective (``objective.metric``)
        an optimising sweeper (Optuna) uses; a failed job the worst value (the sweep goes on)."""
        from stagetrain.runs.search import objective_value

        info = run_job(cfg, outcome)
        metric = OmegaConf.select(cfg, "objective.metric", default="val/acc")
        mode = OmegaConf.select(cfg, "objective.mode", default="auto")
        return objective_value(info, str(metric), str(mode))

    return hydra_main


def run_job(cfg: DictConfig, outcome: Outcome) -> dict[str, Any] | None:
    """Train one job in Hydra's output directory; returns its run record (a failed sweep
    job's too: record_failure) and puts it in ``outcome``; a single run's failure exits here."""
    from stagetrain.core.errors import StopRequested
    from stagetrain.runs import runlock
    from stagetrain.runs.guard import locked_train, say_error
    from stagetrain.runs.launch import requeue_after_stop, resume_hint

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    try:
        info = locked_train(_train, cfg, run_dir, multirun)
    except (StagetrainError, StopRequested) as e:
        stopped = isinstance(e, StopRequested)
        message = f"Stopped by {e} after writing a checkpoint; {resume_hint(run_dir, multirun)}" if stopped else str(e)
        outcome.error = message
        if stopped:  # a submitit job stopped by SIGUSR1 / its preemption signal: requeue, exit here
            requeue_after_stop(str(e))
        say_error(message, not (stopped or multirun), run_dir)
        if multirun and not stopped:  # one failed job must not stop the sweep
            return record_failure(run_dir, cfg, message) if not cfg.dry_run else {"error": message}
        if not isinstance(e, runlock.RunDirBusy):  # another process's directory: not ours to clean
            RunDir(run_dir).remove_if_unused()
        # A signal stops the whole sweep too (SystemExit passes through Hydra's launchers);
        # re-running it with resume=auto continues this job and skips the completed ones.
        sys.exit((EXIT_INTERRUPTED if str(e) == "SIGINT" else EXIT_STOPPED) if stopped else 1)
    except Exception as e:
        outcome.error = f"{type(e).__name__}: {e}"
        if multirun:
            log.exception("Job %s failed", run_dir)
            return record_failure(run_dir, cfg, f"{type(e).__name__}: {e}")
        RunDir(run_dir).remove_if_unused()
        raise
    except KeyboardInterrupt:  # Ctrl-C before training started, or a second one during a step
        RunDir(run_dir).remove_if_unused()
        if RunDir(run_dir).has_run():
            log.error("Interrupted by Ctrl-C; the last checkpoint is kept: %s", resume_hint(run_dir, multirun))
        else:
            log.error("Interrupted by Ctrl-C before training started; nothing was written.")
        sys.exit(EXIT_INTERRUPTED)
    except BaseException:
        RunDir(run_dir).remove_if_unused()
        raise
    outcome.info = info
    if info.get("dry_run"):
        RunDir(run_dir).remove_if_unused()
    elif not multirun:
        from stagetrain import distributed

        if distributed.is_main():  # under torchrun: once, by rank 0
            print_summary(info)
    return info


def _train(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """The job: one run, or a search over tune.lr / tune.grid (tune.py); then its equal-FLOPs control
    when compare.scratch=true."""
    from stagetrain.families import vouched_by
    from stagetrain.runs.control import control_after
    from stagetrain.runs.runner import train

    with vouched_by(cfg):  # this job's own config names the code that may run (trust.py)
        if (OmegaConf.select(cfg, "tune.lr", default=None) or OmegaConf.select(cfg, "tune.grid", default=None)) \
                and not cfg.dry_run:
            from stagetrain.runs.tune import run_search

            info = run_search(cfg, run_dir)
        else:
            info = train(cfg, run_dir, vouch=False)  # vouched for above
        control_after(cfg, info, run_dir)
    return info


def main(argv: list[str] | None = None) -> None:
    """The console script: ``execute``, then exit with its code (under torchrun, leaving the
    process group first, not at exit: ``distributed.leave``; never imported for --help)."""
    code = execute(sys.argv[1:] if argv is None else list(argv)).code
    if "stagetrain.distributed" in sys.modules:
        sys.modules["stagetrain.distributed"].leave(code in (0, None))
    if code not in (0, None):
        sys.exit(code)


def execute(argv: list[str]) -> Outcome:
    """One command (``_main``), for the console script and the Python API alike: SIGTERM before
    training a clean exit, every lock released at its end (``guard.command``), its outcome returned."""
    from hydra.core.global_hydra import GlobalHydra

    from stagetrain.app.hydrawrites import reporting_to
    from stagetrain.runs.guard import command

    outcome = Outcome()
    GlobalHydra.instance().clear()  # an earlier command of this process (the Python API)
    try:
        with command(), reporting_to(lambda message: setattr(outcome, "error", message)):
            _main(list(argv), outcome)
    except SystemExit as e:  # a refusal, a failed or stopped run, Hydra's own exits
        outcome.code = e.code
    finally:
        GlobalHydra.instance().clear()
    return outcome


def _main(argv: list[str], outcome: Outcome) -> None:
    """Check the command line, then hand it to Hydra. Malformed input (unknown key, bad option,
    type or value, broken YAML, a run directory that must not be touched) is refused here in one
    message, exit code 1, before Hydra writes anything. An unexpected failure of this check:
    Hydra reports the command (``HYDRA_FULL_ERROR=1``: its traceback)."""
    from stagetrain.app.overrides import check_command_line

    if "--version" in argv or "-V" in argv or "--help" in argv or "-h" in argv:  # Hydra's page: --hydra-help
        from stagetrain.app import helppage

        print(helppage.version_text() if "--version" in argv or "-V" in argv else helppage.help_text().rstrip("\n"))
        return
    try:
        extra = check_command_line(argv)
    except StagetrainError as e:
        outcome.code, outcome.error = 1, str(e)
        print(f"Error: {e}", file=sys.stderr)
        return
    except Exception:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        extra = []  # Hydra's own handling is the fallback
    import stagetrain.runs.rundir  # noqa: F401 - torch, and the resolvers of stagetrain.distributed
    saved = sys.argv
    sys.argv = [saved[0] if saved else "stagetrain", *argv, *extra]
    try:
        hydra_entry(outcome)()
    finally:
        sys.argv = saved


if __name__ == "__main__":
    main()
