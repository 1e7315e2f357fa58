"""Transfer fine-tuning vs scratch on the target, at 1%, 10% and 100% of the target labels.

Two transfers, an MLP 784-256-256 (``model.widths=[256,256]``):

* ``mnist04_to_59``  -- source: MNIST digits 0-4; target: digits 5-9 (relabelled 0-4);
* ``mnist_to_fashion`` -- source: MNIST (10 classes); target: Fashion-MNIST.

Per seed, a source is trained with ``strategy=scratch`` on the source data, then for each
target label fraction (``dataset.labeled_fraction``) every fine-tune mode
(``strategy=finetune strategy.source=<source run dir> strategy.mode=<mode>``: full,
linear_probe, partial, lp_ft, bitfit, lora, gradual_unfreeze, add_layers) and
``strategy=scratch`` train on the same target labels. Each cell reports test accuracy
(final model) and training FLOPs (run.json ``flops``). The FLOPs of a fine-tune run
exclude the source's training; the source's FLOPs are reported separately. Output: a
table per transfer (printed and in the JSON) and a plot of accuracy and FLOPs vs the
label fraction.

Settings: the target training set is capped at ``dataset.max_train`` samples (5,000; so
1% = 50 labels, 10 per class) with a 5% validation split, the source at 10,000 samples for
5 epochs. Epochs per label fraction (the same for every mode and scratch): 1% -> 40,
10% -> 15, 100% -> 8, so the label-scarce runs still take some steps. Modes that train a
fresh head plus few or no backbone parameters (linear_probe, lp_ft, bitfit, lora) use
``optim.lr=0.01`` (lp_ft: probe at 0.01, then everything at 0.001); full, partial,
gradual_unfreeze, add_layers and scratch use Adam at 1e-3. Run directories go to /dev/shm
when it exists, and the per-run learning-curve PNGs are skipped (neither is in any number
measured).

    python benchmarks/transfer.py            # 2 transfers x 3 fractions x 9 variants x 2 seeds, ~4 min
    python benchmarks/transfer.py --quick    # digits 0-4 -> 5-9, 1 seed, few epochs: a smoke test
"""

from __future__ import annotations

import argparse
import shutil
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
    finish,
    machine,
    make_cfg,
    mean_std,
    no_run_plots,
)

from stagetrain.runs.runner import train

MODES = ("full", "linear_probe", "partial", "lp_ft", "bitfit", "lora", "gradual_unfreeze", "add_layers")
VARIANTS = ("scratch", *MODES)
# modes that train a fresh head plus few (or no) backbone parameters: 10x the LR (see the README)
MODE_OVERRIDES = {mode: ["optim.lr=0.01"] for mode in ("linear_probe", "lp_ft", "bitfit", "lora")}
FRACTION_EPOCHS = {0.01: 40, 0.1: 15, 1.0: 8}
TARGET = ["dataset.val_fraction=0.05"]  # a smaller validation split: it is evaluated every epoch
MODEL = ["model=mlp", "model.widths=[256,256]"]
SCENARIOS: dict[str, dict[str, list[str]]] = {
    "mnist04_to_59": {"source": [*dataset_overrides("mnist"), "dataset.classes=[0,1,2,3,4]"],
                      "target": [*dataset_overrides("mnist"), "dataset.classes=[5,6,7,8,9]"]},
    "mnist_to_fashion": {"source": dataset_overrides("mnist"),
                         "target": dataset_overrides("fashion_mnist")},
}
FULL = {"source_max_train": 10000, "source_epochs": 5, "target_max_train": 5000}
QUICK_SCENARIOS = {"digits04_to_59": {"source": ["dataset=digits", "dataset.classes=[0,1,2,3,4]"],
                                      "target": ["dataset=digits", "dataset.classes=[5,6,7,8,9]"]}}
QUICK = {"source_max_train": None, "source_epochs": 5, "target_max_train": None}


def run(overrides: list[str], workdir: Path, keep: bool = False) -> dict[str, Any]:
    """One ``train()`` in a fresh directory under ``workdir``; removed unless ``keep``."""
    run_dir = Path(tempfile.mkdtemp(prefix="run_", dir=workdir))
    start = time.perf_counter()
    info = train(make_cfg(*overrides), run_dir)
    wall = time.perf_counter() - start
    out = {"overrides": overrides, "flops": info["flops"], "seconds": info["seconds"],
           "final": info["final"], "params": info["params"], "train_call_seconds": wall,
           "stages": [{k: s[k] for k in ("name", "epochs", "steps", "samples", "flops", "seconds", "cache")}
                      for s in info["stages"]],
           "run_dir": str(run_dir)}
    if not keep:
        shutil.rmtree(run_dir)
    return out


def cap(n: int | None) -> list[str]:
    return [] if n is None else [f"dataset.max_train={n}"]


def summarize(cells: dict[str, dict[str, list[dict[str, Any]]]]) -> dict[str, Any]:
    """Per fraction and variant: test accuracy mean/std over seeds, FLOPs, seconds, delta vs scratch."""
    table: dict[str, Any] = {}
    for frac, variants in cells.items():
        scratch_acc = statistics.fmean(r["final"]["test/acc"] for r in variants["scratch"])
        table[frac] = {}
        for variant, runs in variants.items():
            accs = [r["final"]["test/acc"] for r in runs]
            mean, std = mean_std(accs)
            table[frac][variant] = {
                "test_acc": accs, "mean_test_acc": mean, "std_test_acc": std,
                "delta_vs_scratch": mean - scratch_acc,
                "flops": statistics.fmean(r["flops"] for r in runs),
                "seconds": statistics.fmean(r["seconds"] for r in runs),
            }
    return table


def print_table(name: str, table: dict[str, Any]) -> None:
    fracs = list(table)
    print(f"\n{name}: test accuracy mean over seeds (delta vs scratch) | FLOPs")
    print(f"{'variant':17s}" + "".join(f"{f:>28s}" for f in fracs))
    for variant in VARIANTS:
        cells = [table[f][variant] for f in fracs]
        print(f"{variant:17s}" + "".join(
            f"{c['mean_test_acc']:8.4f} ({c['delta_vs_scratch']:+.3f}) {c['flops']:8.2e}" for c in cells))


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(result["transfers"])
    fig, axes = plt.subplots(2, len(names), figsize=(5.5 * len(names), 7.5), squeeze=False)
    cmap = plt.get_cmap("tab10")
    for j, name in enumerate(names):
        table = result["transfers"][name]["table"]
        fracs = [float(f) for f in table]
        for i, variant in enumerate(VARIANTS):
            style = {"color": "black", "lw": 2.2, "ls": "--"} if variant == "scratch" else {"color": cmap(i - 1)}
            accs = [table[f][variant]["mean_test_acc"] for f in table]
            errs = [table[f][variant]["std_test_acc"] for f in table]
            axes[0][j].errorbar(fracs, accs, yerr=errs, marker="o", ms=4, capsize=2, label=variant, **style)
            axes[1][j].plot(fracs, [table[f][variant]["flops"] for f in table], marker="o", ms=4, **style)
        axes[0][j].set_title(f"{name}: test accuracy (mean, std over seeds)", fontsize=10)
        axes[1][j].set_title(f"{name}: training FLOPs (source excluded)", fontsize=10)
        for ax in axes[:, j]:
            ax.set_xscale("log")
            ax.set_xlabel("fraction of target labels")
            ax.grid(alpha=0.3)
        axes[1][j].set_yscale("log")
        src = result["transfers"][name]["source_flops_mean"]
        axes[1][j].axhline(src, color="gray", ls=":", lw=1)
        axes[1][j].annotate("source training", (fracs[0], src), fontsize=8, color="gray",
                            va="bottom")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="digits 0-4 -> 5-9, 1 seed, short: a smoke test")
    p.add_argument("--seeds", type=int, default=None, help="default 2 (1 with --quick)")
    p.add_argument("--out", type=Path, default=RESULTS / "transfer.json")
    p.add_argument("--no-plot", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(1)
    scenarios, sizes = (QUICK_SCENARIOS, QUICK) if args.quick else (SCENARIOS, FULL)
    fraction_epochs = {0.1: 10, 1.0: 5} if args.quick else FRACTION_EPOCHS
    seeds = list(range(args.seeds or (1 if args.quick else 2)))
    start = time.perf_counter()
    result: dict[str, Any] = {
        "machine": machine(), "quick": args.quick, "seeds": seeds,
        "settings": {**sizes, "model": MODEL, "fraction_epochs": fraction_epochs,
                     "mode_overrides": MODE_OVERRIDES, "threads": 1,
                     "run_dirs": RUN_ROOT or tempfile.gettempdir()},
        "transfers": {}}
    with tempfile.TemporaryDirectory(prefix="transfer_", dir=RUN_ROOT) as tmp, no_run_plots():
        workdir = Path(tmp)
        for name, sc in scenarios.items():
            sources, cells = [], {str(f): {v: [] for v in VARIANTS} for f in fraction_epochs}
            for seed in seeds:
                common = [f"seed={seed}", "device.threads=1", "checkpoint.stage_checkpoints=false"]
                src = run([*sc["source"], *common, *MODEL, *cap(sizes["source_max_train"]),
                           "strategy=scratch", f"train.epochs={sizes['source_epochs']}"], workdir, keep=True)
                sources.append(src)
                print(f"[{name}] seed {seed} source: test acc {src['final']['test/acc']:.4f} "
                      f"FLOPs {src['flops']:.3g}", flush=True)
                for frac, epochs in fraction_epochs.items():
                    target = [*sc["target"], *TARGET, *common, *cap(sizes["target_max_train"]),
                              f"dataset.labeled_fraction={frac}", f"train.epochs={epochs}"]
                    for variant in VARIANTS:
                        if variant == "scratch":
                            extra = [*MODEL, "strategy=scratch"]
                        else:
                            extra = ["strategy=finetune", f"strategy.source={src['run_dir']}",
                                     f"strategy.mode={variant}", *MODE_OVERRIDES.get(variant, [])]
                        r = run([*target, *extra], workdir)
                        cells[str(frac)][variant].append(r)
                        print(f"[{name}] seed {seed} labels {frac:>4} {variant:16s} test acc "
                              f"{r['final']['test/acc']:.4f} FLOPs {r['flops']:.3g} "
                              f"({r['train_call_seconds']:.1f} s)", flush=True)
            table = summarize(cells)
            print_table(name, table)
            result["transfers"][name] = {
                "source_overrides": sources[0]["overrides"], "target_overrides": [*sc["target"], *TARGET],
                "source_runs": [{k: v for k, v in s.items() if k != "run_dir"} for s in sources],
                "source_flops_mean": statistics.fmean(s["flops"] for s in sources),
                "source_test_acc": [s["final"]["test/acc"] for s in sources],
                "table": table, "runs": cells}
            for variants in cells.values():
                for runs in variants.values():
                    for r in runs:
                        r.pop("run_dir", None)
    finish(result, args, start, plot)


if __name__ == "__main__":
    main()
