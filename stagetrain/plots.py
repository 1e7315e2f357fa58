"""Per-run learning-curve plots, drawn from metrics.jsonl alone.

Two PNGs in ``<run>/plots/``: train loss and validation metric against optimizer steps,
and the same against cumulative training FLOPs (the axis comparisons use). Stage
boundaries are dashed lines labelled with the stage name; growth events are marked.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from stagetrain.rundir import read_metrics


def _series(events: list[dict[str, Any]], split: str, key: str, x: str) -> tuple[list[float], list[float]]:
    rows = [e for e in events if e.get("split") == split and key in e]
    return [e[x] for e in rows], [e[key] for e in rows]


def plot_run(run_dir: Path) -> list[Path]:
    """Write the learning-curve plots of a run; returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    for x, label, name in (("step", "optimizer steps", "learning_curves.png"),
                           ("flops", "cumulative training FLOPs", "learning_curves_flops.png")):
        fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6.5), sharex=True)
        top.plot(*_series(events, "train", "loss", x), marker=".", label="train loss")
        top.plot(*_series(events, "val", "loss", x), marker=".", alpha=0.7, label="val loss")
        top.set_yscale("log")
        top.set_ylabel("loss (per stage objective)")
        key = "acc" if has_acc else "loss"
        bottom.plot(*_series(events, "val", key, x), marker=".", color="tab:green", label=f"val {key}")
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
