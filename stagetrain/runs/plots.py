"""The plots: per-run learning curves, and the comparison plots of a sweep or report.

``plot_run``: two PNGs in ``<run>/plots/``, train loss and validation metric against
optimizer steps, and the same against cumulative training FLOPs (the axis comparisons use).
Stage boundaries are dashed lines labelled with the stage name; growth events are marked.
``plot`` (final metric against training FLOPs, Pareto front) and ``plot_curves``
(validation accuracy against FLOPs, one line per run and stage) draw ``report.load_rows``'s
rows: ``summary.png``/``curves.png`` of a sweep and ``stagetrain-report --plot/--curves``.
Where run.json has ``baselines`` (the trivial baseline of the objective: majority class,
unigram, mean image), the metric plots draw it as a horizontal line labelled "chance".
Nothing here imports torch at module level (``stagetrain-report`` starts fast).
"""

from __future__ import annotations

import os
import statistics
from pathlib import Path
from typing import Any

from stagetrain.runread import baseline, clean, number, read_events, read_info

MARKERS = ("o", "s", "^", "D")  # past matplotlib's 10 colours, groups differ by marker / line style
LINES = ("-", "--", ":", "-.")
CHANCE = "chance"


def _series(events: list[dict[str, Any]], split: str, key: str, x: str) -> tuple[list[float], list[float]]:
    rows = [e for e in events if e.get("split") == split and key in e]
    return [e[x] for e in rows], [e[key] for e in rows]


def chance_line(ax: Any, value: float | None) -> None:
    """The trivial baseline as a horizontal line labelled "chance" (nothing when unknown). Far
    outside the data (digits at 0.97 against a chance of 0.06) it would squash the data into
    a band: then the legend names it and the axis keeps the data's range."""
    if value is None:
        return
    low, high = ax.get_ylim()
    if low <= value <= high or not ax.has_data():
        ax.axhline(value, color="grey", ls=":", lw=1.2, label=CHANCE)
    else:
        ax.plot([], [], color="grey", ls=":", lw=1.2,
                label=f"{CHANCE} {value:.3g} ({'below' if value < low else 'above'} the axis)")


def plot_run(run_dir: Path) -> list[Path]:
    """Write the learning-curve plots of a run; returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from stagetrain.runs.rundir import read_metrics

    run_dir = Path(run_dir)
    metrics = run_dir / "metrics.jsonl"
    if not metrics.exists():
        return []
    events = read_metrics(metrics)
    if not any("split" in e for e in events):
        return []
    out_dir = run_dir / "plots"
    out_dir.mkdir(exist_ok=True)
    written = []
    starts = [e for e in events if e.get("event") == "stage_start"]
    growths = [e for e in events if e.get("event") == "growth"]
    has_acc = any(e.get("split") == "val" and "acc" in e for e in events)
    key = "acc" if has_acc else "loss"
    chance = baseline(read_info(run_dir), key) if os.path.lexists(run_dir / "run.json") else None
    for x, label, name in (("step", "optimizer steps", "learning_curves.png"),
                           ("flops", "cumulative training FLOPs", "learning_curves_flops.png")):
        fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6.5), sharex=True)
        top.plot(*_series(events, "train", "loss", x), marker=".", label="train loss")
        top.plot(*_series(events, "val", "loss", x), marker=".", alpha=0.7, label="val loss")
        top.set_yscale("log")
        top.set_ylabel("loss (per stage objective)")
        bottom.plot(*_series(events, "val", key, x), marker=".", color="tab:green", label=f"val {key}")
        chance_line(bottom, chance)
        bottom.set_ylabel(f"validation {'accuracy' if has_acc else 'loss'}")
        bottom.set_xlabel(label)
        # stage boundaries: the x of the last epoch event before each stage starts
        for i, s in enumerate(starts):
            before = [e for e in events[: events.index(s)] if x in e and "split" in e]
            pos = before[-1][x] if before else 0
            for ax in (top, bottom):
                ax.axvline(pos, color="grey", ls="--", lw=0.8)
            top.annotate(f"{i + 1}: {s['stage_name']}", (pos, 1.0), xycoords=("data", "axes fraction"),
                         rotation=90, va="top", ha="right", fontsize=7, color="grey")
        for g in growths:
            for ax in (top, bottom):
                ax.axvline(g[x], color="tab:red", lw=1.2, alpha=0.6)
            bottom.annotate(f"grow -> {g['params_after']:,} params", (g[x], 0.02),
                            xycoords=("data", "axes fraction"), rotation=90, fontsize=7, color="tab:red")
        top.legend(loc="upper right", fontsize=8)
        bottom.legend(loc="lower right", fontsize=8)
        fig.suptitle(f"{run_dir.name}: learning curves against {label}")
        fig.tight_layout()
        path = out_dir / name
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points not beaten by another with fewer-or-equal FLOPs and higher-or-equal metric."""
    front, best = [], float("-inf")
    for x, y in sorted(points, key=lambda p: (p[0], -p[1])):
        if y > best:
            front.append((x, y))
            best = y
    return front


def group_label(row: dict[str, Any], by: list[str] | None) -> str:
    """A legend label: the strategy, then ``key=value`` of the other grouping columns."""
    from stagetrain.runread import fmt

    by = by or ["strategy"]
    value = lambda v: str(v) if isinstance(v, int) else fmt(v)  # noqa: E731 - a seed is not 1,000
    parts = [str(row.get(k)) if k == "strategy" else f"{k.removeprefix('strategy.')}={value(row.get(k))}"
             for k in by if row.get(k) is not None]
    return " ".join(parts)


def rows_chance(rows: list[dict[str, Any]], metric: str) -> float | None:
    """The mean ``chance`` of the runs (report rows) for an accuracy metric; None when no run has one."""
    values = [r["chance"] for r in rows if isinstance(r.get("chance"), int | float)]
    return statistics.fmean(values) if values and metric.endswith("acc") else None


def plot(rows: list[dict[str, Any]], path: Path, metric: str = "test/acc", by: list[str] | None = None,
         intervals: list[tuple[float, float, float]] | None = None) -> list[str]:
    """Final metric against training FLOPs for every completed run, with the Pareto front;
    one colour per group (``by`` columns, default the strategy); ``intervals``: a group mean
    with its confidence interval as an error bar (``compare.interval_points``); the runs'
    trivial baseline as a line labelled "chance" (where run.json has ``baselines``). Returns
    the legend's labels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [r for r in rows if r["status"] == "completed" and r.get(metric) is not None and r.get("flops")]
    fig, ax = plt.subplots(figsize=(10, 5))
    for i, label in enumerate(sorted({group_label(r, by) for r in done})):
        pts = [(r["flops"], r[metric]) for r in done if group_label(r, by) == label]
        ax.scatter(*zip(*pts, strict=True), label=label, alpha=0.8, marker=MARKERS[i // 10 % len(MARKERS)])
    for i, (x, y, half) in enumerate(intervals or []):
        ax.errorbar([x], [y], yerr=[half], color="black", capsize=4, lw=1, marker="_", ms=14,
                    label="group mean, confidence interval (summary.md)" if i == 0 else None)
    front = pareto_front([(r["flops"], r[metric]) for r in done])
    if front:
        ax.plot(*zip(*front, strict=True), color="black", lw=1, ls="--", marker="o", mfc="none",
                ms=11, label="Pareto front (circled)")
    chance_line(ax, rows_chance(done, metric))
    ax.set_xscale("log")
    ax.set_xlabel("training FLOPs")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} against compute ({len(done)} runs)")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return _save(fig, ax, path)


def _stage_curves(run: Path) -> list[list[tuple[float, float]]]:
    """(FLOPs, val acc) per stage of a run: greedy stages score an auxiliary head."""
    stages: dict[str, list[tuple[float, float]]] = {}
    events, problems = read_events(run / "metrics.jsonl")
    for problem in problems:
        print(f"unreadable (skipped): {clean(problem)}")
    for e in events:
        flops, acc = number(e.get("flops")), number(e.get("acc"))
        if e.get("split") == "val" and flops and acc is not None:
            stages.setdefault(str(e.get("stage")), []).append((flops, acc))
    return list(stages.values())


def plot_curves(rows: list[dict[str, Any]], path: Path, by: list[str] | None = None) -> list[str]:
    """Validation accuracy against cumulative training FLOPs, one line per run, one colour per
    group; the runs' trivial baseline (majority class) as a line labelled "chance". Returns the
    legend's labels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by = by or ["strategy"]
    fig, ax = plt.subplots(figsize=(10, 5))
    curves, plotted = [], []
    for row in rows:
        if row["status"] != "completed" or not os.path.lexists(Path(row["run"]) / "metrics.jsonl"):
            continue
        plotted.append(row)
        curves += [(group_label(row, by), pts) for pts in _stage_curves(Path(row["run"]))]
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    order = {g: i for i, g in enumerate(sorted({g for g, _ in curves}))}
    labelled: set[str] = set()
    for group, pts in curves:  # colours in the same order as plot()'s; past 10 groups, new line styles
        i = order[group]
        ax.plot(*zip(*pts, strict=True), color=cycle[i % len(cycle)], ls=LINES[i // len(cycle) % len(LINES)],
                alpha=0.7, lw=1.2, label=None if group in labelled else group)
        labelled.add(group)
    chance_line(ax, rows_chance(plotted, "val/acc"))
    ax.set_xscale("log")
    ax.set_xlabel("cumulative training FLOPs")
    ax.set_ylabel("val/acc")
    ax.set_title("validation accuracy against compute, one line per run and stage")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return _save(fig, ax, path)


def _save(fig: Any, ax: Any, path: Path) -> list[str]:
    """Write the figure; returns its legend's labels."""
    import matplotlib.pyplot as plt

    labels = [t.get_text() for t in ax.get_legend().get_texts()] if ax.get_legend() else []
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return labels
