"""Progressive growth vs training from scratch: FLOPs and time to a target accuracy.

On scikit-learn digits and on subsampled MNIST, an MLP with one hidden layer (16 -> 64 ->
256 units) and with two (16,16 -> 64,64 -> 256,256) is trained by

* ``net2net``       -- ``strategy=grow strategy.op=net2net`` (function-preserving widening,
  the default ``strategy.noise=0``: new units are exact copies);
* ``net2net_noise`` -- the same with ``strategy.noise=0.1`` (copies perturbed to break symmetry);
* ``random``        -- ``strategy.op=random`` (old units kept, new units freshly initialised);
* ``scratch``       -- ``strategy=scratch`` at the final size, as many epochs as grow in all;
* ``scratch_flops`` -- the same with the epochs cut so its total FLOPs match grow's.

Grow stages: ``strategy.epochs_per_stage`` epochs at 16 and at 64 units, then
``strategy.final_epochs`` at 256 (trigger=epochs). From each run's metrics.jsonl (val
events: cumulative training FLOPs and seconds per epoch; growth events) it reports the
FLOPs and training seconds to reach each target validation accuracy, the validation
accuracy at a common FLOP budget (grow's total), final test accuracy, the loss on the probe
batch before/after each growth, and how many distinct hidden units the final model has
(rows of block1's weight grouped at 1% relative distance). Plot: validation accuracy vs
cumulative FLOPs, one line per run, growth points marked.

    python benchmarks/grow_vs_scratch.py            # digits + MNIST (10k), 3 seeds, ~7 min
    python benchmarks/grow_vs_scratch.py --quick    # digits only, 1 seed, short: a smoke test
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from benchutil import (
    RESULTS,
    RUN_ROOT,
    dataset_overrides,
    events,
    finish,
    machine,
    make_cfg,
    no_run_plots,
    val_curve,
)
from safetensors.torch import load_file

from stagetrain.runs.runner import train

VARIANTS = ("scratch", "net2net", "net2net_noise", "random", "scratch_flops")
SETTINGS: dict[str, dict[str, Any]] = {  # per dataset: subsample, epochs, target val accuracies
    "digits": {"max_train": None, "epochs_per_stage": 5, "final_epochs": 20, "targets": [0.9, 0.95, 0.97]},
    "mnist": {"max_train": 10000, "epochs_per_stage": 3, "final_epochs": 10, "targets": [0.9, 0.95, 0.97]},
}
DEPTHS = {1: ([[16], [64], [256]], [256]), 2: ([[16, 16], [64, 64], [256, 256]], [256, 256])}


def hydra_list(value: list[Any]) -> str:
    return str(value).replace(" ", "")


def distinct_units(weights: dict[str, torch.Tensor], tol: float = 0.01) -> int:
    """Groups of block1 units (weight row + bias) closer than ``tol`` x the row's norm."""
    w = torch.cat([weights["blocks.block1.layer.weight"], weights["blocks.block1.layer.bias"][:, None]], 1)
    w = w.double()
    d = torch.cdist(w, w) / w.norm(dim=1, keepdim=True).clamp_min(1e-12)
    left = torch.ones(len(w), dtype=torch.bool)
    groups = 0
    for i in range(len(w)):
        if left[i]:
            groups += 1
            left &= ~(d[i] < tol)
    return groups


def overrides_for(variant: str, dataset: str, depth: int, seed: int, scratch_epochs: int) -> list[str]:
    s = SETTINGS[dataset]
    schedule, final = DEPTHS[depth]
    common = [*dataset_overrides(dataset), f"seed={seed}", "device.threads=1", "model=mlp",
              f"model.widths={hydra_list(final)}"]
    if s["max_train"] is not None:
        common.append(f"dataset.max_train={s['max_train']}")
    if variant.startswith("scratch"):
        return [*common, "strategy=scratch", f"strategy.epochs={scratch_epochs}"]
    op = "random" if variant == "random" else "net2net"
    noise = 0.1 if variant == "net2net_noise" else 0.0
    return [*common, "strategy=grow", f"strategy.op={op}", f"strategy.noise={noise}",
            f"strategy.widths={hydra_list(schedule)}", "strategy.trigger=epochs",
            f"strategy.epochs_per_stage={s['epochs_per_stage']}", f"strategy.final_epochs={s['final_epochs']}"]


def one_run(overrides: list[str]) -> dict[str, Any]:
    """Train once in a temporary run directory; keep the curve, growth events and summary."""
    with tempfile.TemporaryDirectory(prefix="grow_vs_scratch_", dir=RUN_ROOT) as tmp, no_run_plots():
        start = time.perf_counter()
        info = train(make_cfg(*overrides), tmp)
        wall = time.perf_counter() - start
        evts = events(tmp)
        weights = load_file(str(Path(tmp) / "model.safetensors"))
    growth = [{k: e[k] for k in ("stage", "flops", "step", "probe_loss_before", "probe_loss_after",
                                 "params_before", "params_after")}
              for e in evts if e.get("event") == "growth"]
    return {"overrides": overrides, "curve": val_curve(evts), "growth": growth,
            "flops": info["flops"], "seconds": info["seconds"], "final": info["final"],
            "params": info["params"], "epochs": sum(s["epochs"] for s in info["stages"]),
            "stop_reason": info.get("stop_reason"), "train_call_seconds": wall,
            "distinct_block1_units": distinct_units(weights)}


def first_reaching(curve: list[dict[str, float]], target: float) -> dict[str, float] | None:
    for point in curve:
        if point["acc"] >= target:
            return {"flops": point["flops"], "seconds": point["time"], "epoch_index": curve.index(point) + 1}
    return None


def acc_at(curve: list[dict[str, float]], budget: float) -> float | None:
    """Validation accuracy of the last evaluation whose cumulative FLOPs are within the budget."""
    inside = [p["acc"] for p in curve if p["flops"] <= budget * 1.02]  # 2%: epoch rounding
    return inside[-1] if inside else None


def summarize_cell(runs: dict[str, list[dict[str, Any]]], targets: list[float]) -> dict[str, Any]:
    """Per variant: medians over seeds of FLOPs/seconds to each target, acc at grow's budget, ..."""
    budget = statistics.median(r["flops"] for r in runs["net2net"])
    out: dict[str, Any] = {"flop_budget": budget}
    for variant, rs in runs.items():
        row: dict[str, Any] = {
            "total_flops": statistics.median(r["flops"] for r in rs),
            "total_seconds": statistics.median(r["seconds"] for r in rs),
            "test_acc": [r["final"]["test/acc"] for r in rs],
            "final_val_acc": [r["final"]["val/acc"] for r in rs],
            "acc_at_budget": [acc_at(r["curve"], budget) for r in rs],
            "distinct_block1_units": [r["distinct_block1_units"] for r in rs],
            "to_target": {},
        }
        row["mean_test_acc"] = statistics.fmean(row["test_acc"])
        got = [a for a in row["acc_at_budget"] if a is not None]
        row["mean_acc_at_budget"] = statistics.fmean(got) if got else None
        for t in targets:
            hits = [first_reaching(r["curve"], t) for r in rs]
            ok = [h for h in hits if h is not None]
            row["to_target"][str(t)] = {
                "reached": f"{len(ok)}/{len(rs)}",
                "median_flops": statistics.median(h["flops"] for h in ok) if ok else None,
                "median_seconds": statistics.median(h["seconds"] for h in ok) if ok else None,
                "per_seed": hits,
            }
        if rs[0]["growth"]:
            row["probe_loss_jump"] = [[g["probe_loss_after"] - g["probe_loss_before"] for g in r["growth"]]
                                      for r in rs]
        out[variant] = row
    return out


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = list(result["cells"])
    colors = {"scratch": "tab:gray", "scratch_flops": "black", "net2net": "tab:blue",
              "net2net_noise": "tab:green", "random": "tab:red"}
    cols = min(2, len(cells))
    rows = -(-len(cells) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6.2 * cols, 4.4 * rows), squeeze=False)
    for ax, key in zip(axes.flat, cells, strict=False):
        cell = result["cells"][key]
        finals = []
        for variant, runs in cell["runs"].items():
            for i, r in enumerate(runs):
                xs = [p["flops"] for p in r["curve"]]
                ys = [p["acc"] for p in r["curve"]]
                finals.append(ys[-1])
                ax.plot(xs, ys, color=colors[variant], alpha=0.6, lw=1,
                        label=variant if i == 0 else None)
                for g in r["growth"]:  # the last evaluation before the growth
                    before = [p for p in r["curve"] if p["flops"] <= g["flops"]]
                    if before:
                        finals.append(before[-1]["acc"])
                        ax.plot(g["flops"], before[-1]["acc"], marker="o", ms=5, mfc="none",
                                color=colors[variant])
        ax.axvline(cell["summary"]["flop_budget"], color="k", ls=":", lw=0.8)
        ax.set_xscale("log")
        ax.set_ylim(max(0.0, min(finals) - 0.05), 1.0)  # every final point and growth point
        ax.set_xlabel("cumulative training FLOPs")
        ax.set_ylabel("validation accuracy")
        ax.set_title(key, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7, loc="lower right")
    fig.suptitle("grow vs scratch (o: growth points; dotted: grow's total FLOPs)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="digits, 1 seed, 2+2+4 epochs: a smoke test")
    p.add_argument("--seeds", type=int, default=None, help="default 3 (1 with --quick)")
    p.add_argument("--datasets", default=None, help="comma-separated (default digits,mnist)")
    p.add_argument("--out", type=Path, default=RESULTS / "grow_vs_scratch.json")
    p.add_argument("--no-plot", action="store_true")
    p.add_argument("--plot-only", action="store_true", help="redraw the PNG from an existing --out JSON")
    args = p.parse_args()
    if args.plot_only:
        plot(json.loads(args.out.read_text()), args.out.with_suffix(".png"))
        return
    torch.set_num_threads(1)
    if args.quick:
        SETTINGS["digits"].update(epochs_per_stage=2, final_epochs=4)
    seeds = list(range(args.seeds or (1 if args.quick else 3)))
    datasets = (args.datasets or ("digits" if args.quick else "digits,mnist")).split(",")
    start = time.perf_counter()
    result: dict[str, Any] = {"machine": machine(), "quick": args.quick, "seeds": seeds,
                              "settings": {d: SETTINGS[d] for d in datasets},
                              "variants": VARIANTS, "cells": {}}
    for dataset in datasets:
        s = SETTINGS[dataset]
        grow_epochs = 2 * s["epochs_per_stage"] + s["final_epochs"]
        for depth in DEPTHS:
            key = f"{dataset}, {depth} hidden layer{'s' if depth > 1 else ''}"
            runs: dict[str, list[dict[str, Any]]] = {v: [] for v in VARIANTS}
            for seed in seeds:
                for variant in VARIANTS:
                    epochs = grow_epochs
                    if variant == "scratch_flops":  # grow's FLOPs / scratch's FLOPs per epoch
                        per_epoch = runs["scratch"][-1]["flops"] / runs["scratch"][-1]["epochs"]
                        epochs = max(1, round(runs["net2net"][-1]["flops"] / per_epoch))
                    r = one_run(overrides_for(variant, dataset, depth, seed, epochs))
                    runs[variant].append(r)
                    print(f"[{key}] seed {seed} {variant:13s} epochs {r['epochs']:2d} "
                          f"FLOPs {r['flops']:.3g} train s {r['seconds']:.1f} "
                          f"test acc {r['final']['test/acc']:.4f} units {r['distinct_block1_units']}",
                          flush=True)
            summary = summarize_cell(runs, s["targets"])
            result["cells"][key] = {"dataset": dataset, "depth": depth, "summary": summary, "runs": runs}
            for variant in VARIANTS:
                row = summary[variant]
                reach = ", ".join(f"{t}: {v['reached']} {v['median_flops'] or float('nan'):.3g} FLOPs "
                                  f"{v['median_seconds'] or float('nan'):.2f} s"
                                  for t, v in row["to_target"].items())
                print(f"  {variant:13s} test {row['mean_test_acc']:.4f} acc@budget "
                      f"{row['mean_acc_at_budget'] or float('nan'):.4f} | {reach}")
    finish(result, args, start, plot)


if __name__ == "__main__":
    main()
