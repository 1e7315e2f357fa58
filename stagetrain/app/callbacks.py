"""Hydra callbacks: the sweep summary written when a multirun ends.

Registered in conf/config.yaml under ``hydra.callbacks``. After the last job of
``stagetrain -m ...`` the sweep directory gets ``summary.csv`` (one row per job),
``summary.md`` (the same, plus means and standard deviations over seeds when seeds vary),
``summary.png`` (final test accuracy against training FLOPs, Pareto front) and
``curves.png`` (validation curves against FLOPs); the terminal gets a short table and the
list of failed jobs with their error lines. A sweep with a failed job exits with status 1
after writing all of this; the other jobs ran to completion.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from stagetrain.report import command as report
from stagetrain.report import compare
from stagetrain.runread import clean, fmt

log = logging.getLogger("stagetrain")
SHORT = ("strategy", "status", "test/acc", "flops", "seconds", "stop_reason")


def write_summary(sweep_dir: Path, control: str = compare.CONTROL, level: float = 0.95,
                  answer: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Write summary.csv/.md/.png and curves.png into ``sweep_dir``; returns the rows. With
    several seeds: mean ± t-interval per group, and each arm against ``control`` (compare.py);
    ``answer`` (when given) receives those ``groups`` and the grouping columns ``by``."""
    from stagetrain.runs.tune import is_trial

    runs = [r for r in report.find_runs([sweep_dir]) if not is_trial(r)]  # a search's trials: in its job's row
    if not runs:
        return []
    rows, varying = report.load_rows(runs)
    for row in rows:
        row["job"] = Path(row["run"]).relative_to(sweep_dir).as_posix()
    rows = [{"job": r.pop("job"), **r} for r in rows]
    rows.sort(key=lambda r: [int(p) if p.isdigit() else p for p in r["job"].split("/")])
    (sweep_dir / "summary.csv").write_text(report.to_csv(rows))
    markdown = f"# Sweep {sweep_dir.name}: {len(rows)} jobs\n\n" + report.to_markdown(
        [{k: v for k, v in r.items() if k != "run"} for r in rows])
    by = compare.label_controls(rows, ["strategy", *[k for k in varying if k != "seed"]])
    groups: list[dict[str, Any]] = []
    if "seed" in varying:
        groups = compare.with_intervals(report.group_rows(rows, by), rows, by, control=control, level=level)
        markdown += (f"\n## Mean and std over seeds, grouped by {', '.join(by)}; {level * 100:g}% intervals, "
                     "verdicts against the control\n\n"
                     + report.to_markdown(groups) + "\n" + compare.verdict_note("test/acc", control, level) + "\n")
    (sweep_dir / "summary.md").write_text(markdown)
    if answer is not None:
        answer.update(groups=groups, by=by)
    try:
        report.plot(rows, sweep_dir / "summary.png", by=by, intervals=compare.interval_points(groups))
        report.plot_curves(rows, sweep_dir / "curves.png", by)
    except Exception as e:  # noqa: BLE001 - a plot never hides the table
        log.warning("Could not draw the sweep plots: %s", e)
    return rows


def remove_empty_sweep_dir(sweep_dir: Path) -> None:
    """A sweep that ran nothing (a dry run, a refused start) leaves only Hydra's multirun.yaml and
    empty job folders: remove them (and the date folders Hydra made for them, when empty)."""
    if not sweep_dir.is_dir() or any(p.is_file() and p.name != "multirun.yaml" for p in sweep_dir.rglob("*")):
        return
    from stagetrain.runs.rundir import remove_tree_and_empty_parents

    remove_tree_and_empty_parents(sweep_dir)


def _check_objective(config: DictConfig) -> None:
    """An optimising sweeper must optimise the way ``objective`` says: refused before any job."""
    from omegaconf import OmegaConf

    from stagetrain.core.errors import StagetrainError
    from stagetrain.runs.search import check_objective, check_sweeper, prepare_sweeper, quiet_optuna

    metric, mode = str(config.objective.metric), str(config.objective.mode)
    try:
        check_objective(metric, mode)
        check_sweeper(config.hydra, metric, mode)
        subdir = OmegaConf.to_container(config.hydra.sweep, resolve=False).get("subdir", "")
        prepare_sweeper(config.hydra, str(subdir), str(config.get("resume")))
        quiet_optuna(config.hydra)
    except StagetrainError as e:
        print(f"Error: {e} Nothing was run.", file=sys.stderr)
        _remove_unused_sweep_dir(Path(str(config.hydra.sweep.dir)))
        sys.exit(1)


def _remove_unused_sweep_dir(sweep_dir: Path) -> None:
    """A refused sweep leaves nothing behind: the sweep directory this command created for
    its lock (``runlock.hold``) is removed again while it is still empty."""
    from stagetrain.runs import runlock

    if runlock.created_here(sweep_dir) and sweep_dir.is_dir() and not any(sweep_dir.iterdir()):
        from stagetrain.runs.rundir import remove_tree_and_empty_parents

        runlock.release(sweep_dir)
        remove_tree_and_empty_parents(sweep_dir)


def _print_selected(config: DictConfig, rows: list[dict[str, Any]], sweep_dir: Path) -> None:
    """The job a search (an optimising sweeper: Optuna) selects (best ``objective.metric``, a
    validation metric), with its test result; also appended to summary.md. A comparison's
    sweep selects nothing: its best job is a lucky seed (``tune.lr`` selects inside each job)."""
    from stagetrain.runs.search import direction, is_search, selected

    if not is_search(config.hydra):
        return
    metric, mode = str(config.objective.metric), str(config.objective.mode)
    best = selected(rows, metric, mode)
    if best is None or len(rows) < 2:
        return
    keys = [k for k in best if k not in ("run", "job", "status", "error", "stop_reason", "flops", "seconds",
                                         metric, *report.METRICS)]
    setting = " ".join(f"{k}={fmt(best[k])}" for k in keys)
    line = (f"selected by {metric} ({direction(metric, mode)}imum): job {best['job']} ({setting}): "
            f"{metric}={fmt(best[metric])}, test/acc={fmt(best.get('test/acc'))}")
    line = clean(line)
    print(line)
    with (sweep_dir / "summary.md").open("a") as f:
        f.write(f"\n{line}\n")


class SweepSummary(Callback):
    """``on_multirun_start``: refuse to sweep over an earlier sweep's runs without ``resume``.
    ``on_multirun_end``: summarise the sweep directory and report failed jobs."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        _check_objective(config)
        sweep_dir = Path(config.hydra.sweep.dir)
        if config.get("dry_run"):
            return
        if config.get("resume") == "never" and sweep_dir.is_dir() and report.find_runs([sweep_dir]):
            print(f"Error: the sweep directory {sweep_dir} already holds the runs of an earlier sweep. "
                  "Add resume=auto to continue that sweep (completed jobs are skipped, the others "
                  "continue), or leave hydra.sweep.dir at its default for a new sweep directory. "
                  "Nothing was run or changed.", file=sys.stderr)
            sys.exit(1)
        if config.get("logger", {}).get("mlflow"):  # the parent MLflow run of the jobs' runs
            from stagetrain.runs.mlflowlog import start_sweep

            start_sweep(sweep_dir, config.logger.get("mlflow_uri"))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if config.get("dry_run"):  # dry runs write nothing, so there is nothing to summarise
            remove_empty_sweep_dir(sweep_dir)
            return
        control = f"{config.compare.control_key}={config.compare.control_value}"
        answer: dict[str, Any] = {}
        rows = write_summary(sweep_dir, control, float(config.compare.level), answer)
        if config.get("logger", {}).get("mlflow"):
            from stagetrain.runs.mlflowlog import end_sweep

            end_sweep(sweep_dir, rows, config.logger.get("mlflow_uri"))
        if not rows:
            log.warning("Sweep %s: no job wrote a run.json; nothing to summarise.", sweep_dir)
            return
        cols = ["job", *[c for c in rows[0] if c not in ("run", "job", "error", *SHORT)
                         and c not in report.METRICS], *SHORT]
        report.print_table([{c: r.get(c) for c in cols} for r in rows], f"sweep {sweep_dir}")
        if answer.get("groups"):  # a seeded sweep: the answer, in 100 columns (the wide table: summary.md)
            compare.print_verdicts(answer["groups"], answer["by"], f"verdicts against {control}, "
                                   f"{len({r.get('seed') for r in rows})} seeds (test/acc)")
        _print_selected(config, rows, sweep_dir)
        failed = [r for r in rows if r["status"] != "completed"]
        print(f"summary: {sweep_dir / 'summary.md'} (also summary.csv, summary.png, curves.png)")
        if failed:
            print(f"{len(failed)} of {len(rows)} jobs did not complete:")
            for r in failed:
                print(f"  {r['status']}: {clean(r['run'])}: {r['error']}")
            print(f"Re-run the same command with hydra.sweep.dir={sweep_dir} resume=auto to retry "
                  "them; completed jobs are skipped.")
            sys.exit(1)
