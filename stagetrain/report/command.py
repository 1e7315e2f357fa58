"""``stagetrain-report``: compare runs (and sweeps) from their run directories alone.

    stagetrain-report outputs/multirun/2026-11-23/12-00-00_ab12cd [more dirs...]
        [--group-by strategy] [--csv out.csv] [--markdown out.md] [--plot out.png]
        [--curves curves.png]

One row per run: strategy, the overrides that differ between the runs, final val/test
metrics, FLOPs, wall time, status and stop reason. Failed and unfinished runs are listed
with their error line, never dropped. ``--group-by KEY[,KEY]`` aggregates runs that differ
only in seed and prints the verdict table (arm, n, mean ± interval, difference to the
control [interval], verdict) in 100 columns; every group column goes to --markdown/--csv.
Runs whose run.json has the convergence check (``convergence``, ``baselines``) add the columns
``under-trained`` (a stage still falling at its end or barely beyond its trivial baseline;
per group: how many runs) and ``chance`` (the majority-class accuracy); an under-trained
arm's "worse" reads "under-trained" and its other verdicts carry the flag (compare.py).
Older runs have neither column and no flag.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import statistics
import sys
from pathlib import Path
from typing import Any

from stagetrain.report import compare
from stagetrain.runread import (
    baseline,
    clean,
    fmt,
    job_config,
    number,
    read_info,
    under_trained_flag,
)
from stagetrain.runs.plots import plot, plot_curves  # noqa: F401 - the sweep callback draws with report.plot / plot_curves
from stagetrain.runs.tune import is_trial

METRICS = ("val/acc", "test/acc", "test/loss")
UNDER = compare.UNDER  # the column: the run has a stage that did not converge or barely learnt


def find_runs(paths: list[Path]) -> list[Path]:
    """Run directories (holding run.json) at or below each path."""
    runs: list[Path] = []
    for path in paths:
        if os.path.lexists(path / "run.json") and not (path / "run.json").is_dir():  # a broken one is listed too
            runs.append(path)
        elif path.is_dir():
            runs += sorted(p.parent for p in path.rglob("run.json") if not p.is_dir())
    return sorted(set(runs))


def _varies(key: str, configs: list[dict[str, Any]]) -> bool:
    """Whether ``key`` differs between runs. A strategy option (``strategy.*``) counts only
    when it differs between runs of the same strategy: the strategy column already says
    that a layerwise run has a ``strategy.objective`` and a scratch run has none."""
    if not key.startswith("strategy.") or key == "strategy.name":
        return len({json.dumps(c.get(key)) for c in configs}) > 1
    by_strategy: dict[Any, set[str]] = {}
    for c in configs:
        by_strategy.setdefault(c.get("strategy.name"), set()).add(json.dumps(c.get(key)))
    return any(len(values) > 1 for values in by_strategy.values())


def load_rows(runs: list[Path], wanted: list[str] | None = None) -> tuple[list[dict[str, Any]], list[str]]:
    """One row per run, plus the config keys whose values differ between the runs, and the
    ``wanted`` keys (--group-by) that any run has: blank where a run lacks it (``strategy.objective``
    of a scratch run). Every text read from a run directory (keys and values) is ``clean``."""
    infos = [(run, read_info(run)) for run in runs]  # never raises: a bad file is "unreadable"
    configs = [{clean(k): clean(v) for k, v in job_config(info).items()} for _, info in infos]
    keys = sorted({k for c in configs for k in c})
    ignore = ("dataset.root", "progress", "resume", "dry_run")
    varying = [k for k in keys if (k not in ignore and _varies(k, configs)) or k in (wanted or [])]
    rows = []
    for (run, info), config in zip(infos, configs, strict=True):
        row: dict[str, Any] = {"run": str(run), "strategy": clean(info.get("strategy", "?")),
                               "status": clean(info.get("status", "?"))}
        row.update({k: config.get(k) for k in varying if k != "strategy.name"})
        final = info.get("final") or {}
        row.update({m: final.get(m) for m in METRICS})
        row["flops"] = info.get("flops")
        row["seconds"] = info.get("seconds")
        row["stop_reason"] = clean(info.get("stop_reason"))
        error = clean(info.get("error") or "")
        row["error"] = error.splitlines()[0][:300] if error else ""
        row.update({UNDER: under_trained_flag(info), "chance": baseline(info)})
        rows.append(row)
    for col in (UNDER, "chance"):  # runs recorded before the convergence check: no such columns
        if all(r[col] is None for r in rows):
            for r in rows:
                del r[col]
    return rows, [k for k in varying if k != "strategy.name"]


def group_rows(rows: list[dict[str, Any]], by: list[str]) -> list[dict[str, Any]]:
    """Mean and std of the numeric columns over completed runs with equal ``by`` values."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        if row["status"] == "completed":
            groups.setdefault(tuple(row.get(k) for k in by), []).append(row)
    out = []
    for key, members in groups.items():
        g: dict[str, Any] = dict(zip(by, key, strict=True))
        g["runs"] = len(members)
        for col in (*METRICS, "flops", "seconds"):
            values = [m[col] for m in members if isinstance(m.get(col), int | float)]
            g[f"{col} mean"] = statistics.fmean(values) if values else None
            g[f"{col} std"] = statistics.stdev(values) if len(values) > 1 else 0.0 if values else None
        flags = [m[UNDER] for m in members if m.get(UNDER) is not None]
        if flags:  # how many of the group's runs have an under-trained stage (compare marks the verdict)
            g[UNDER] = sum(flags)
        chance = [m["chance"] for m in members if isinstance(m.get("chance"), int | float)]
        if chance:
            g["chance"] = statistics.fmean(chance)
        out.append(g)
    return out


def stage_rows(rows: list[dict[str, Any]], by: list[str]) -> list[dict[str, Any]]:
    """Per group (``by``) and stage, from run.json ``convergence`` (runs recorded before it:
    left out): how many runs' stage converged (and were not judged: too short to tell) and how
    many barely learnt, and the means of its
    final metric, its trivial baseline ("chance") and how far beyond it the stage got."""
    stages: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        entries = read_info(Path(row["run"])).get("convergence") if row["status"] == "completed" else None
        for e in entries if isinstance(entries, list) else []:
            if isinstance(e, dict):
                key = (*[row.get(k) for k in by], e.get("stage"), clean(str(e.get("name"))))
                stages.setdefault(key, []).append(e)
    out = []
    for key, entries in stages.items():
        g: dict[str, Any] = {**dict(zip(by, key[:-2], strict=True)), "stage": key[-2], "name": key[-1]}
        g["objective"] = clean(str(entries[0].get("objective")))
        g["metric"] = clean(str(entries[0].get("metric")))
        unjudged = sum(not isinstance(e.get("converged"), bool) for e in entries)  # too few epochs to tell
        g["converged"] = f"{sum(e.get('converged') is True for e in entries)}/{len(entries)}" + (
            f" ({unjudged} not judged)" if unjudged else "")
        g["barely learnt"] = f"{sum(e.get('barely_learnt') is True for e in entries)}/{len(entries)}"
        for col, field in (("final", "final"), ("chance", "baseline"), ("beyond chance", "beyond_baseline")):
            values = [v for e in entries if (v := number(e.get(field))) is not None]
            g[col] = statistics.fmean(values) if values else None
        g["epochs"] = "/".join(str(e.get("epochs")) for e in entries)
        out.append(g)
    return out





def to_csv(rows: list[dict[str, Any]]) -> str:
    cols = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=cols)
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def to_markdown(rows: list[dict[str, Any]]) -> str:
    cols = list(dict.fromkeys(k for r in rows for k in r))
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r.get(c)).replace("|", "/") for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def print_table(rows: list[dict[str, Any]], title: str) -> None:
    """The rows as a table on the terminal; every cell is plain text (``clean``, and never
    read as Rich markup: a value ``[link=...]`` stays that text)."""
    from rich.table import Table
    from rich.text import Text

    from stagetrain.progress import make_console

    cols = [c for c in dict.fromkeys(k for r in rows for k in r) if c != "run"]
    table = Table(title=Text(clean(title)))
    for c in cols:
        table.add_column(Text(clean(str(c))))
    for r in rows:
        style = None if r.get("status", "completed") == "completed" else "red"
        table.add_row(*(Text(clean(fmt(r.get(c)))) for c in cols), style=style)
    make_console().print(table)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="stagetrain-report", description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="+", type=Path, help="run directories and/or sweep directories")
    parser.add_argument("--group-by", default=None, help="comma-separated columns, e.g. strategy or strategy,strategy.mode")
    parser.add_argument("--csv", type=Path, help="write the table as CSV")
    parser.add_argument("--markdown", type=Path, help="write the table as Markdown")
    parser.add_argument("--plot", type=Path, help="write metric-vs-FLOPs PNG (default: none)")
    parser.add_argument("--curves", type=Path, help="write val-accuracy curves (against FLOPs) PNG, "
                        "one colour per --group-by group")
    parser.add_argument("--control", default="strategy=scratch", help="with --group-by: the control runs "
                        "(key=value) each group is compared with, paired by seed; --level: its interval level")
    parser.add_argument("--level", type=float, default=0.95)
    parser.add_argument("--stages", type=Path, help="write, per group and stage, whether it converged and how "
                        "far beyond its trivial baseline it got (run.json convergence), as Markdown")
    args = parser.parse_args(argv)
    runs = [r for r in find_runs(args.paths) if not is_trial(r)]  # tune.lr trials: summarised by their job
    if not runs:
        print(f"stagetrain-report: no runs found under {clean(', '.join(map(str, args.paths)))} "
              "(a run directory holds a run.json). Give run directories or a sweep directory.", file=sys.stderr)
        return 2
    keys = [k.strip() for k in args.group_by.split(",")] if args.group_by else []
    rows, varying = load_rows(runs, keys)
    table, stage_by = rows, ["strategy"]
    if args.group_by:
        unknown = [k for k in keys if k not in rows[0]]
        if unknown:
            print(f"stagetrain-report: --group-by {clean(', '.join(unknown))} is not a column; columns: "
                  f"{', '.join(k for k in rows[0] if k != 'run')}.", file=sys.stderr)
            return 2
        by = stage_by = compare.label_controls(rows, keys)
        table = compare.with_intervals(group_rows(rows, by), rows, by, control=args.control, level=args.level)
        # the answer in 100 columns; every group column: --markdown / --csv
        compare.print_verdicts(table, by, f"{len(runs)} runs, grouped by {args.group_by}")
        print(compare.verdict_note("test/acc", args.control, args.level)
              + ("" if args.csv or args.markdown else " Every column (std, FLOPs, time): --markdown FILE."))
    else:
        print_table(table, f"{len(runs)} runs")
    failed = [r for r in rows if r["status"] != "completed"]
    for r in failed:
        print(f"{r['status']}: {clean(r['run'])}: {r['error']}")
    by = keys or None
    writers = [(args.csv, lambda path: path.write_text(to_csv(table))),
               (args.markdown, lambda path: path.write_text(to_markdown(table))),
               (args.stages, lambda path: path.write_text(to_markdown(stage_rows(rows, stage_by)))),
               (args.plot, lambda path: plot(rows, path, by=by, intervals=compare.interval_points(table))),
               (args.curves, lambda path: plot_curves(rows, path, by))]
    code = 0
    for path, write in writers:
        if path is not None:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                write(path)
            except OSError as e:  # a directory, a read-only place, a full disk: say so, write the rest
                print(f"stagetrain-report: could not write {clean(str(path))}: {e.strerror or e}.", file=sys.stderr)
                code = 2
                continue
            print(f"wrote {clean(str(path.resolve()))}")
    return code


def cli() -> None:
    sys.exit(main())
