"""Growing a Transformer language model by depth stacking vs training it from scratch:
FLOPs and wall time to reach a target validation loss.

The arms and sizes are those of ``conf/experiment/lm_grow_vs_scratch.yaml`` (byte-level LM
on the fortunes corpus, d_model 64, 64-byte windows): ``scratch`` trains the 8-layer model
6 epochs; ``grow_stack`` trains 2 layers 2 epochs, stacks them (G_stack, Adam moments
copied) to 4 for 2 epochs, stacks again to 8 for 4 epochs (0.93x scratch's FLOPs). The
targets are scratch's final validation loss (mean over seeds) and that plus 0.05 and 0.1
nats. From each run's metrics.jsonl (one val event per epoch: cumulative training FLOPs and
seconds) it reports the FLOPs and training seconds at the first evaluation at or below each
target (epoch granularity), the final val/test loss, the val loss of scratch at grow's total
FLOPs (linear interpolation between its evaluations), and the probe loss before/after each
growth. Plot: val loss against cumulative FLOPs, one line per run, the target dashed.

    STAGETRAIN_DATA=../shared/data python benchmarks/lm_grow.py              # 2 arms x 3 seeds (~40 min here)
    python benchmarks/lm_grow.py --from-sweep <sweep dir> [<sweep dir> ...]  # finished sweeps
    python benchmarks/lm_grow.py --quick                                      # tiny sizes, 1 seed: a smoke test

``--from-sweep`` reads any sweep with the arms ``scratch`` and ``grow_stack``, e.g. ``experiment=gstack_llama``
(the same comparison on ``model=hf``, a LLaMA-style decoder over BPE tokens: pass ``--experiment gstack_llama``
to name it in the JSON and the plot; its losses are nats per BPE token).
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml
from benchutil import (
    DATA_ROOT,
    RESULTS,
    RUN_ROOT,
    events,
    finish,
    machine,
    make_cfg,
    mean_std,
    no_run_plots,
)

from stagetrain.runs.runner import train

ARMS = ("scratch", "grow_stack")
QUICK = ["model.d_model=16", "dataset.max_len=16", "model.max_len=16", "dataset.max_train=200", "train.epochs=2"]
QUICK_GROW = ["strategy.epochs_per_stage=1", "strategy.final_epochs=1"]
MARGINS = (0.0, 0.05, 0.1)  # nats above scratch's final val loss


def run_all(seeds: list[int], quick: bool) -> list[dict[str, Any]]:
    """Train every arm and seed; returns each run's arm, seed and directory."""
    root = Path(tempfile.mkdtemp(prefix="lm_grow_", dir=RUN_ROOT))
    runs = []
    with no_run_plots():
        for seed in seeds:
            for arm in ARMS:
                extra = (QUICK + (QUICK_GROW if arm != "scratch" else [])) if quick else []
                run = root / f"{arm}_{seed}"
                train(make_cfg("experiment=lm_grow_vs_scratch", f"arm={arm}", f"seed={seed}", "device.threads=1",
                               f"dataset.root={DATA_ROOT}", *extra), run)
                runs.append({"arm": arm, "seed": seed, "dir": run})
    return runs


def sweep_runs(sweeps: list[Path]) -> list[dict[str, Any]]:
    """The completed runs of finished ``-m experiment=lm_grow_vs_scratch`` sweeps."""
    runs = []
    jobs = [p for sweep in sweeps for p in sorted(sweep.iterdir()) if (p / ".hydra" / "overrides.yaml").is_file()]
    for job in jobs:
        if json.loads((job / "run.json").read_text())["status"] != "completed":
            continue
        over = dict(o.split("=", 1) for o in yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text()))
        runs.append({"arm": over["arm"], "seed": int(over.get("seed", 0)), "dir": job})
    return runs


def curve(run_dir: Path) -> dict[str, Any]:
    evts = events(run_dir)
    val = [{"stage": e["stage"], "epoch": e["epoch"], "flops": e["flops"], "time": e["time"], "loss": e["loss"]}
           for e in evts if e.get("split") == "val" and "epoch" in e]
    final = json.loads((run_dir / "run.json").read_text())["final"]
    growth = [{"flops": e["flops"], "params_before": e["params_before"], "params_after": e["params_after"],
               "probe_loss_before": e["probe_loss_before"], "probe_loss_after": e["probe_loss_after"]}
              for e in evts if e.get("event") == "growth"]
    return {"val": val, "test_loss": final.get("test/loss"), "growth": growth}


def first_reach(val: list[dict[str, float]], target: float) -> dict[str, float] | None:
    hit = next((p for p in val if p["loss"] <= target), None)
    return None if hit is None else {"flops": hit["flops"], "seconds": hit["time"]}


def loss_at(val: list[dict[str, float]], flops: float) -> float | None:
    """The val loss at ``flops`` cumulative FLOPs, linear between evaluations."""
    for a, b in zip(val, val[1:], strict=False):
        if a["flops"] <= flops <= b["flops"]:
            w = (flops - a["flops"]) / (b["flops"] - a["flops"])
            return a["loss"] + w * (b["loss"] - a["loss"])
    return None


def analyse(runs: list[dict[str, Any]]) -> dict[str, Any]:
    for r in runs:
        r.update(curve(r["dir"]))
        r["dir"] = str(r["dir"])
        r["final_val_loss"] = r["val"][-1]["loss"]
        r["total_flops"] = r["val"][-1]["flops"]
        r["total_seconds"] = r["val"][-1]["time"]
    scratch = [r for r in runs if r["arm"] == "scratch"]
    base = mean_std([r["final_val_loss"] for r in scratch])[0]
    targets = [round(base + m, 4) for m in MARGINS]
    summary: dict[str, Any] = {"targets": targets}
    for arm in ARMS:
        mine = [r for r in runs if r["arm"] == arm]
        for r in mine:
            r["reach"] = {str(t): first_reach(r["val"], t) for t in targets}
        summary[arm] = {
            "final_val_loss": mean_std([r["final_val_loss"] for r in mine]),
            "test_loss": mean_std([r["test_loss"] for r in mine if r["test_loss"] is not None]),
            "total_flops": mean_std([r["total_flops"] for r in mine]),
            "train_seconds": mean_std([r["total_seconds"] for r in mine]),
            "reached": {str(t): sum(r["reach"][str(t)] is not None for r in mine) for t in targets},
            "flops_to_target": {str(t): mean_std([r["reach"][str(t)]["flops"] for r in mine if r["reach"][str(t)]])
                                if any(r["reach"][str(t)] for r in mine) else None for t in targets},
            "seconds_to_target": {str(t): mean_std([r["reach"][str(t)]["seconds"] for r in mine
                                                    if r["reach"][str(t)]])
                                  if any(r["reach"][str(t)] for r in mine) else None for t in targets},
        }
    grow_flops = summary["grow_stack"]["total_flops"][0]
    at = [loss_at(r["val"], grow_flops) for r in scratch]
    summary["scratch"]["val_loss_at_grow_flops"] = mean_std([x for x in at if x is not None]) if any(
        x is not None for x in at) else None
    return {"runs": runs, "summary": summary}


TITLES = {"lm_grow_vs_scratch": ("byte LM on fortunes: stacking 2->4->8 layers vs 8 layers from scratch", "nats/byte"),
          "gstack_llama": ("LLaMA-style decoder (model=hf), BPE tokens on fortunes: stacking 2->4->8 vs scratch",
                           "nats/token")}


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    colours = {"scratch": "tab:blue", "grow_stack": "tab:orange"}
    for r in result["runs"]:
        label = r["arm"] if r["seed"] == min(x["seed"] for x in result["runs"] if x["arm"] == r["arm"]) else None
        ax.plot([p["flops"] for p in r["val"]], [p["loss"] for p in r["val"]], "o-", ms=3, color=colours[r["arm"]],
                label=label, alpha=0.8)
        for g in r["growth"]:
            ax.axvline(g["flops"], color=colours[r["arm"]], lw=0.5, ls=":")
    ax.axhline(result["summary"]["targets"][0], color="grey", ls="--", lw=1, label="scratch final val loss")
    title, unit = TITLES.get(result["settings"]["experiment"], (result["settings"]["experiment"], "nats/token"))
    ax.set_xlabel("cumulative training FLOPs")
    ax.set_ylabel(f"val loss ({unit})")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes, one seed: a smoke test")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--from-sweep", type=Path, nargs="+",
                   help="analyse finished lm_grow_vs_scratch sweeps (e.g. one per arm) instead of training")
    p.add_argument("--experiment", default="lm_grow_vs_scratch",
                   help="the experiment the sweeps ran (--from-sweep): its name in the JSON and the plot")
    p.add_argument("--out", type=Path, default=RESULTS / "lm_grow.json")
    p.add_argument("--no-plot", action="store_true")
    args = p.parse_args()
    start = time.perf_counter()
    runs = sweep_runs(args.from_sweep) if args.from_sweep else run_all(list(range(1 if args.quick else args.seeds)),
                                                                        args.quick)
    result = {"machine": machine(), "settings": {"experiment": args.experiment, "quick": args.quick,
                                                 "from_sweep": [str(x) for x in args.from_sweep or []],
                                                 "margins_nats": MARGINS},
              **analyse(runs)}
    s = result["summary"]
    for arm in ARMS:
        reach = ", ".join(f"<= {t}: {'-' if v is None else f'{v[0]:.3g}'}" for t, v in s[arm]["flops_to_target"].items())
        print(f"{arm:>10}: final val loss {s[arm]['final_val_loss'][0]:.4f}, FLOPs {s[arm]['total_flops'][0]:.3g}; "
              f"FLOPs to {reach}")
    if math.isnan(s["targets"][0]):
        raise SystemExit("no completed scratch run")
    finish(result, args, start, plot)


if __name__ == "__main__":
    main()
