"""Layer-wise feature caching: per-stage time with the cache on vs off, and against a hand loop.

For greedy supervised layer-wise pretraining (``strategy=layerwise``,
``strategy.finetune.enabled=false``) on subsampled MNIST, with

* ``mlp`` -- an MLP 784-500-500-2000 (the classic DBN-sized stack), and
* ``cnn`` -- a small CNN, conv blocks of 16, 32, 32 channels (BN, ReLU, max-pool),

this measures, per greedy stage k (block k trained on the frozen blocks 1..k-1 through its
auxiliary linear head):

* ``on`` / ``off`` -- the engine's stage time (run.json ``stages[k].seconds``: the training
  steps plus, with the cache, building it) with ``strategy.cache=on`` and ``off``;
* ``hand`` -- a minimal loop that trains the same block k and the same auxiliary head, from
  the same initial weights, on precomputed input features of the same size (the frozen
  prefix's outputs), with the engine's batching (batches of ``train.batch_size`` from the
  same seeded permutation), Adam and cosine schedule, for the same epochs. Only its
  training loop is timed; computing the features is not.

Targets (from the issue): a cached stage k costs <= 1.15x the hand loop for block k, and
the whole greedy phase is >= 1.25x faster with the cache than without for the MLP.

Runs are interleaved (on, off, hand; the order rotates every repeat). The first repeat's
``on`` run is kept as the reference: the hand loop starts from its stage checkpoints and
its trained blocks are compared bit for bit with the engine's, and every engine run's
final weights are compared with it (caching is documented as bit-exact). ``_build_cache``
and ``_train_epoch`` are wrapped with timers in this process to split a stage's time into
cache build and epochs (the engine is not edited).

    python benchmarks/layerwise_cache.py            # MNIST, ~6 min on 2 shared CPU cores
    python benchmarks/layerwise_cache.py --quick    # scikit-learn digits: a smoke test
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from statistics import median
from typing import Any
from unittest import mock

import torch
import torch.nn.functional as F
from benchutil import (
    RESULTS,
    RUN_ROOT,
    dataset_overrides,
    machine,
    make_cfg,
    no_run_plots,
    write_json,
)
from omegaconf import DictConfig
from safetensors.torch import load_file

import stagetrain.engine.loop as engine_loop
from stagetrain import checkpoint as ckpt
from stagetrain.data import DataBundle, epoch_permutation
from stagetrain.datasets import load_data
from stagetrain.engine import Engine
from stagetrain.models import StagedModel
from stagetrain.nn.objectives import build_helper
from stagetrain.nn.optim import lr_factor
from stagetrain.runs.device import seed_everything
from stagetrain.runs.runner import train

Weights = dict[str, torch.Tensor]

MODELS: dict[str, dict[str, Any]] = {  # full run settings per model
    "mlp": {"model": ["model=mlp", "model.widths=[500,500,2000]"], "max_train": 10000, "epochs": 3},
    "cnn": {"model": ["model=cnn", "model.channels=[16,32,32]"], "max_train": 5000, "epochs": 2},
}
QUICK: dict[str, dict[str, Any]] = {  # digits: 8x8 inputs, 1,437 training samples
    "mlp": {"model": ["model=mlp", "model.widths=[128,128,256]"], "max_train": None, "epochs": 2},
    "cnn": {"model": ["model=cnn", "model.channels=[8,16]"], "max_train": None, "epochs": 2},
}


@contextmanager
def engine_timers() -> Iterator[dict[str, Any]]:
    """Seconds spent in the engine's cache build and each ``Engine._train_epoch``, per stage."""
    acc: dict[str, Any] = {"build": {}, "epochs": {}}

    def wrap(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:  # (engine, ...) or build_cache(..., state)
            k = args[0].state.stage if name == "_train_epoch" else args[-1].stage
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                dt = time.perf_counter() - start
                if name == "_build_cache":
                    acc["build"][k] = acc["build"].get(k, 0.0) + dt
                else:
                    acc["epochs"].setdefault(k, []).append(dt)

        return timed

    with ExitStack() as stack:
        stack.enter_context(mock.patch.object(Engine, "_train_epoch", wrap("_train_epoch", Engine._train_epoch)))
        stack.enter_context(mock.patch.object(engine_loop, "build_cache", wrap("_build_cache", engine_loop.build_cache)))
        yield acc


def run_engine(cfg: DictConfig, run_dir: str) -> dict[str, Any]:
    """One ``train()`` call; per-stage seconds, FLOPs, cache notes and the timers' split."""
    with engine_timers() as acc, no_run_plots():
        start = time.perf_counter()
        info = train(cfg, run_dir)
        wall = time.perf_counter() - start
    stages = info["stages"]
    return {
        "stage_seconds": [s["seconds"] for s in stages],
        "stage_flops": [s["flops"] for s in stages],
        "cache": [s["cache"] for s in stages],
        "build_seconds": [acc["build"].get(k, 0.0) for k in range(len(stages))],
        "epoch_seconds": [acc["epochs"].get(k, []) for k in range(len(stages))],
        "greedy_seconds": sum(s["seconds"] for s in stages),
        "stage_val_acc": [s["final"].get("val/acc") for s in stages],
        "final": info["final"], "train_call_seconds": wall,
        "weights": load_file(str(Path(run_dir) / "model.safetensors")),
    }


def stage_start(ref_dir: Path, plan: list[dict[str, Any]], k: int, seed: int) -> StagedModel:
    """The model as the engine had it when stage k (0-based) started, RNG included."""
    if k == 0:
        first = ckpt.load(ref_dir / "checkpoints" / f"stage-1-{plan[0]['name']}.pt")
        seed_everything(seed)  # what build_engine does before building the model
        return StagedModel(first["arch"])
    state = ckpt.load(ref_dir / "checkpoints" / f"stage-{k}-{plan[k - 1]['name']}.pt")
    model = StagedModel(state["arch"])
    model.load_state_dict(state["model"])
    ckpt.set_rng_state(state["rng"])  # the engine builds the helper next, from this state
    return model


def precompute(model: StagedModel, data: DataBundle, k: int, chunk: int) -> tuple[torch.Tensor, float]:
    """Outputs of the frozen blocks 1..k (eval mode) for every labelled sample, in chunks."""
    model.eval()
    idx = data.labeled
    start = time.perf_counter()
    with torch.no_grad():
        parts = [model.features(data.normalize(data.train.x[idx[i:i + chunk]]), 0, k)
                 for i in range(0, len(idx), chunk)]
    feats = torch.cat(parts)
    return feats, time.perf_counter() - start


def run_hand(cfg: DictConfig, data: DataBundle, ref_dir: Path, plan: list[dict[str, Any]],
             k: int) -> dict[str, Any]:
    """Train block k+1 and its auxiliary head alone on precomputed features (timed loop only)."""
    stage = plan[k]
    model = stage_start(ref_dir, plan, k, cfg.seed)
    helper = build_helper(stage["helper"])
    feats, pre_seconds = precompute(model, data, k, cfg.train.eval_batch_size)  # as the engine's cache
    _, pre_small = precompute(model, data, k, cfg.train.batch_size)
    y = data.train.y[data.labeled]
    block = model.blocks[f"block{k + 1}"].train()
    helper.train()
    opt = torch.optim.Adam([*block.parameters(), *helper.parameters()], lr=stage["lr"],
                           weight_decay=stage["weight_decay"])
    n, bs, epochs = len(y), cfg.train.batch_size, stage["epochs"]
    steps = max(1, n // bs if n % bs == 1 and n > bs else math.ceil(n / bs))
    s = cfg.sched
    warmup, step_size, gamma = int(s.warmup_epochs), int(s.step_size), float(s.gamma)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: lr_factor(
        stage["sched"], i, epochs * steps, steps, warmup, step_size, gamma))
    start = time.perf_counter()
    for epoch in range(epochs):
        perm = epoch_permutation(n, cfg.seed, k, epoch, torch.device("cpu"))
        for b in range(steps):
            pos = perm[b * bs:(b + 1) * bs] if b < steps - 1 else perm[b * bs:]
            loss = F.cross_entropy(helper(block(feats[pos])), y[pos])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    seconds = time.perf_counter() - start
    # bit-identity with the engine's block k (and, for the last stage, the head it became)
    after = ckpt.load(ref_dir / "checkpoints" / f"stage-{k + 1}-{stage['name']}.pt")["model"]
    mine = {f"blocks.block{k + 1}.{n_}": v for n_, v in block.state_dict().items()}
    if stage.get("helper_to_head"):
        mine.update({f"head.layer.{n_}": v for n_, v in helper.layer.state_dict().items()})
    same = all(torch.equal(v, after[name]) for name, v in mine.items())
    return {"seconds": seconds, "steps": steps * epochs, "feature_shape": list(feats.shape),
            "precompute_seconds_eval_batch": pre_seconds, "precompute_seconds_train_batch": pre_small,
            "bit_identical_to_engine": same}


def identical(a: Weights, b: Weights) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def ratios(a: list[float], b: list[float]) -> dict[str, float]:
    """a/b three ways: medians, best runs (min), and the median of same-repeat pairs."""
    return {"median": median(a) / median(b), "best": min(a) / min(b),
            "paired_median": median(x / y for x, y in zip(a, b, strict=True))}


def summarize(runs: dict[str, list[Any]], targets: dict[str, float], check_total: bool) -> dict[str, Any]:
    """Per-stage times and ratios, the greedy-phase speed-up, and the targets.

    A target counts as met when it holds for the medians; ``*_best`` says the same for the
    best (fastest) run of each variant, the usual estimate on a noisy machine.
    """
    n_stages = len(runs["on"][0]["stage_seconds"])
    stages = []
    for k in range(n_stages):
        on = [r["stage_seconds"][k] for r in runs["on"]]
        off = [r["stage_seconds"][k] for r in runs["off"]]
        hand = [r[k]["seconds"] for r in runs["hand"]]
        build = [r["build_seconds"][k] for r in runs["on"]]
        epochs_only = [a - c for a, c in zip(on, build, strict=True)]
        cached = runs["on"][0]["cache"][k].startswith("on")
        f_on, f_off = runs["on"][0]["stage_flops"][k], runs["off"][0]["stage_flops"][k]
        row = {
            "stage": k + 1, "cached": cached, "cache_note": runs["on"][0]["cache"][k],
            "seconds": {"on": on, "off": off, "hand": hand, "on_cache_build": build},
            "median_seconds": {"on": median(on), "off": median(off), "hand": median(hand)},
            "best_seconds": {"on": min(on), "off": min(off), "hand": min(hand)},
            "median_build_seconds": median(build),
            "on_vs_hand": ratios(on, hand),
            "on_epochs_only_vs_hand": ratios(epochs_only, hand),
            "off_vs_on": ratios(off, on),
            "flops": {"on": f_on, "off": f_off, "ratio_off_vs_on": f_off / f_on},
            "hand_precompute_seconds": {  # the features at the engine's chunk size and at batch size
                "eval_batch": median(r[k]["precompute_seconds_eval_batch"] for r in runs["hand"]),
                "train_batch": median(r[k]["precompute_seconds_train_batch"] for r in runs["hand"])},
        }
        if cached:
            row["meets_target"] = row["on_vs_hand"]["median"] <= targets["stage_vs_hand"]
            row["meets_target_best"] = row["on_vs_hand"]["best"] <= targets["stage_vs_hand"]
        stages.append(row)
    on_total = [r["greedy_seconds"] for r in runs["on"]]
    off_total = [r["greedy_seconds"] for r in runs["off"]]
    flops_on = sum(runs["on"][0]["stage_flops"])
    flops_off = sum(runs["off"][0]["stage_flops"])
    total = {
        "seconds": {"on": on_total, "off": off_total},
        "speedup_off_vs_on": ratios(off_total, on_total),
        "flops": {"on": flops_on, "off": flops_off}, "flop_ratio_off_vs_on": flops_off / flops_on,
    }
    if check_total:
        total["meets_target"] = total["speedup_off_vs_on"]["median"] >= targets["greedy_speedup"]
        total["meets_target_best"] = total["speedup_off_vs_on"]["best"] >= targets["greedy_speedup"]
    return {"stages": stages, "greedy_phase": total,
            "all_stage_targets_met": all(s.get("meets_target", True) for s in stages)}


def bench_model(name: str, settings: dict[str, Any], quick: bool, repeats: int,
                targets: dict[str, float], keep: Path) -> dict[str, Any]:
    ds = dataset_overrides("digits" if quick else "mnist")
    max_train = [] if settings["max_train"] is None else [f"dataset.max_train={settings['max_train']}"]
    common = [*ds, *max_train, *settings["model"], "strategy=layerwise",
              "strategy.objective=supervised", "strategy.finetune.enabled=false",
              f"strategy.epochs_per_layer={settings['epochs']}", "device.threads=1"]
    cfgs = {mode: make_cfg(*common, f"strategy.cache={mode}") for mode in ("on", "off")}
    data = load_data(cfgs["on"].dataset, cfgs["on"].seed)
    ref_dir = keep / f"{name}_reference"
    runs: dict[str, list[Any]] = {"on": [], "off": [], "hand": []}
    order = ["on", "hand", "off"]  # the first repeat's "on" run is the reference for "hand"
    print(f"[{name}] {len(data.labeled)} training samples, {settings['epochs']} epochs per layer, "
          f"{repeats} repeats", flush=True)
    for r in range(repeats):
        for variant in order[r % 3:] + order[:r % 3]:
            if variant == "hand":
                stages = json.loads((ref_dir / "run.json").read_text())["plan"]["stages"]
                runs["hand"].append([run_hand(cfgs["on"], data, ref_dir, stages, k)
                                     for k in range(len(stages))])
                got = [round(h["seconds"], 3) for h in runs["hand"][-1]]
            else:
                if variant == "on" and not ref_dir.exists():
                    run_dir = str(ref_dir)
                else:
                    run_dir = tempfile.mkdtemp(prefix=f"{name}_{variant}_", dir=keep)
                out = run_engine(cfgs[variant], run_dir)
                if run_dir != str(ref_dir):
                    shutil.rmtree(run_dir)
                runs[variant].append(out)
                got = out["stage_seconds"]
            print(f"[{name}] repeat {r + 1}/{repeats} {variant:4s} stage seconds {got}", flush=True)
    reference = runs["on"][0]["weights"]
    bit = {v: [identical(reference, run["weights"]) for run in runs[v]] for v in ("on", "off")}
    for v in ("on", "off"):
        for run in runs[v]:
            del run["weights"]
    summary = summarize(runs, targets, check_total=name == "mlp")
    return {"overrides": common, "train_samples": len(data.labeled), "epochs_per_layer": settings["epochs"],
            "batch_size": cfgs["on"].train.batch_size, "eval_batch_size": cfgs["on"].train.eval_batch_size,
            "summary": summary, "final_weights_identical_to_reference": bit, "runs": runs}


def fmt(r: dict[str, float]) -> str:
    return f"{r['median']:.2f} (best {r['best']:.2f}, paired {r['paired_median']:.2f})"


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(result["models"])
    fig, axes = plt.subplots(1, len(models), figsize=(5 * len(models), 3.8), squeeze=False)
    for ax, name in zip(axes[0], models, strict=True):
        stages = result["models"][name]["summary"]["stages"]
        xs = range(len(stages))
        for i, (variant, color) in enumerate((("off", "tab:red"), ("on", "tab:blue"), ("hand", "tab:gray"))):
            vals = [s["median_seconds"][variant] for s in stages]
            ax.bar([x + (i - 1) * 0.27 for x in xs], vals, 0.27, label=variant, color=color)
        builds = [s["median_build_seconds"] for s in stages]
        ax.bar(list(xs), builds, 0.27, color="tab:cyan", label="on: cache build")
        ax.set_xticks(list(xs), [f"stage {s['stage']}" for s in stages])
        ax.set_ylabel("median stage seconds")
        ax.set_title(f"{name}: greedy stages")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="digits, 1 repeat: a smoke test")
    p.add_argument("--repeats", type=int, default=None, help="default 3 (1 with --quick)")
    p.add_argument("--models", default="mlp,cnn", help="comma-separated: mlp, cnn")
    p.add_argument("--out", type=Path, default=RESULTS / "layerwise_cache.json")
    p.add_argument("--no-plot", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(1)
    repeats = args.repeats or (1 if args.quick else 3)
    table = QUICK if args.quick else MODELS
    targets = {"stage_vs_hand": 1.15, "greedy_speedup": 1.25}
    info = machine()
    start = time.perf_counter()
    result: dict[str, Any] = {"machine": info, "targets": targets, "quick": args.quick,
                              "repeats": repeats, "models": {}}
    with tempfile.TemporaryDirectory(prefix="layerwise_cache_", dir=RUN_ROOT) as keep:
        for name in args.models.split(","):
            result["models"][name] = bench_model(name, table[name], args.quick, repeats, targets, Path(keep))
    result["machine"]["loadavg_end"] = os.getloadavg()
    result["total_seconds"] = time.perf_counter() - start
    out = args.out if not args.quick else args.out.with_name(args.out.stem + "_quick.json")
    write_json(out, result)
    for name, res in result["models"].items():
        s = res["summary"]
        for row in s["stages"]:
            print(f"{name} stage {row['stage']} cached={row['cached']}: on/hand {fmt(row['on_vs_hand'])} "
                  f"(epochs only {fmt(row['on_epochs_only_vs_hand'])}), off/on {fmt(row['off_vs_on'])}, "
                  f"build {row['median_build_seconds']:.2f}s")
        g = s["greedy_phase"]
        print(f"{name} greedy phase off/on {fmt(g['speedup_off_vs_on'])}, "
              f"FLOP ratio {g['flop_ratio_off_vs_on']:.2f}; bit-identical: "
              f"{res['final_weights_identical_to_reference']}, hand vs engine "
              f"{[h['bit_identical_to_engine'] for h in res['runs']['hand'][0]]}")
    if not args.no_plot:
        plot(result, out.with_suffix(".png"))
    print(f"total {result['total_seconds']:.0f} s")


if __name__ == "__main__":
    main()
