"""Engine overhead: stagetrain's engine against a minimal hand-written PyTorch loop.

The same MLP, data, seed, data order, batches, optimizer and LR schedule are trained by

* ``engine`` -- ``stagetrain.run.train`` (strategy=scratch; metrics logging, run.json and
  checkpoints at their defaults), composed through Hydra like the CLI does;
* ``hand``   -- a minimal loop over the same in-memory tensors (slice a permutation,
  normalise the batch, forward, cross-entropy, backward, Adam step, LambdaLR step);
* ``loader`` -- that loop fed by a ``torch.utils.data.DataLoader`` over a TensorDataset
  (per-sample indexing + collate, as most tutorials do), same batches in the same order.

Runs are interleaved (the order rotates every repeat); each variant keeps its best mean
epoch time over the repeats. Timed per epoch:

* engine: ``Engine._train_epoch`` + ``Engine._end_epoch`` minus the validation pass inside
  it, i.e. the steps plus per-epoch metrics.jsonl lines, last.pt/best.pt and run.json
  (the methods are wrapped with a timer here; the engine itself is not modified);
* hand, loader: the epoch's permutation and its steps.

Not timed anywhere: reading the data, building the model, validation, final evaluation.

    python benchmarks/overhead.py             # MNIST, MLP [256,128], 2 epochs, best of 5
    python benchmarks/overhead.py --quick     # scikit-learn digits: a smoke test
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_module
from omegaconf import DictConfig
from safetensors.torch import load_file
from torch.utils.data import DataLoader, TensorDataset

import stagetrain.cli  # noqa: F401  (registers the resolvers and schemas)
from stagetrain.data import DataBundle, epoch_permutation, load_data
from stagetrain.engine import Engine
from stagetrain.models import StagedModel, build_spec
from stagetrain.optim import lr_factor
from stagetrain.run import seed_everything, train

DATA_ROOT = Path(os.environ.get("STAGETRAIN_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
Weights = dict[str, torch.Tensor]


def make_cfg(overrides: list[str]) -> DictConfig:
    with initialize_config_module("stagetrain.conf", version_base="1.3"):
        return compose("config", overrides=overrides)


def now() -> tuple[float, float]:
    """(wall, CPU) seconds: CPU time is the cross-check that other load on the machine barely moves."""
    return time.perf_counter(), time.process_time()


def since(start: tuple[float, float]) -> tuple[float, float]:
    wall, cpu = now()
    return wall - start[0], cpu - start[1]


@contextmanager
def engine_clock() -> Iterator[dict[str, list[float]]]:
    """Accumulate (wall, CPU) time spent in the engine's epoch methods while the block runs."""
    names = {"_train_epoch": "steps", "_end_epoch": "end_epoch", "evaluate": "val_eval"}
    acc = {key: [0.0, 0.0] for key in names.values()} | {"epochs": [0, 0]}
    originals = {name: getattr(Engine, name) for name in names}

    def timed(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def wrapper(self: Engine, *args: Any) -> Any:
            start = now()
            try:
                return fn(self, *args)
            finally:  # evaluate(None, split) is the final evaluation, outside the epochs
                if name != "evaluate" or args[0] is not None:
                    for i, d in enumerate(since(start)):
                        acc[names[name]][i] += d
                acc["epochs"][0] += name == "_end_epoch"

        return wrapper

    for name, fn in originals.items():
        setattr(Engine, name, timed(name, fn))
    try:
        yield acc
    finally:
        for name, fn in originals.items():
            setattr(Engine, name, fn)


Result = tuple[tuple[float, float], Weights, dict[str, float]]  # (wall, CPU) s/epoch, weights, details


def run_engine(cfg: DictConfig) -> Result:
    """One ``train()`` call: per epoch, the steps plus the end-of-epoch work except validation."""
    with tempfile.TemporaryDirectory() as tmp, engine_clock() as acc:
        start = now()
        info = train(cfg, tmp)
        wall = since(start)[0]
        weights = load_file(str(Path(tmp) / "model.safetensors"))
    n = acc["epochs"][0]
    per_epoch = [(acc["steps"][i] + acc["end_epoch"][i] - acc["val_eval"][i]) / n for i in (0, 1)]
    details = {"steps": acc["steps"][0] / n, "steps_cpu": acc["steps"][1] / n,
               "end_epoch_without_val": (acc["end_epoch"][0] - acc["val_eval"][0]) / n,
               "val_eval": acc["val_eval"][0] / n, "run_json_stage_seconds": info["stages"][0]["seconds"] / n,
               "train_call_wall": wall}
    return (per_epoch[0], per_epoch[1]), weights, details


def run_hand(cfg: DictConfig, data: DataBundle, use_loader: bool) -> Result:
    """The minimal loop: same init, permutation, batches, Adam and schedule as the engine."""
    seed_everything(cfg.seed)
    model = StagedModel(build_spec(cfg.model, data.in_shape, data.num_classes))
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    n, bs, epochs = len(data.train), cfg.train.batch_size, cfg.train.epochs
    steps = n // bs if n % bs == 1 and n > bs else -(-n // bs)  # a lone last sample joins the batch before
    s = cfg.sched
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: lr_factor(
        s.name, i, epochs * steps, steps, s.warmup_epochs, s.step_size, s.gamma))
    dataset = TensorDataset(data.train.x, data.train.y)
    cpu = torch.device("cpu")
    start = now()
    for epoch in range(epochs):
        perm = epoch_permutation(n, cfg.seed, 0, epoch, cpu)
        chunks = [perm[b * bs:(b + 1) * bs] for b in range(steps - 1)] + [perm[(steps - 1) * bs:]]
        if use_loader:
            batches: Any = DataLoader(dataset, batch_sampler=[c.tolist() for c in chunks])
        else:
            batches = ((data.train.x[c], data.train.y[c]) for c in chunks)
        for xb, yb in batches:
            loss = F.cross_entropy(model(data.normalize(xb)), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    wall, cpu_s = since(start)
    return (wall / epochs, cpu_s / epochs), {k: v.detach().clone() for k, v in model.state_dict().items()}, {}


def identical(a: Weights, b: Weights) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def machine() -> dict[str, Any]:
    cpu = platform.processor()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(), "platform": platform.platform(),
            "cuda": torch.cuda.is_available(), "loadavg_start": os.getloadavg()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="digits instead of MNIST (a smoke test)")
    p.add_argument("--repeats", type=int, default=5, help="runs of each variant; the best is kept")
    p.add_argument("--epochs", type=int, default=None, help="default: 2 (MNIST), 5 (--quick)")
    p.add_argument("--widths", default="[256,128]", help="MLP hidden widths")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default)")
    p.add_argument("--progress", default="plain", help="engine progress mode (auto|rich|plain|off)")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "overhead.json")
    args = p.parse_args()
    epochs = args.epochs or (5 if args.quick else 2)
    dataset = ["dataset=digits"] if args.quick else ["dataset=mnist", f"dataset.root={DATA_ROOT}"]
    overrides = ["strategy=scratch", "device=cpu", f"model.widths={args.widths}", f"train.epochs={epochs}",
                 f"device.threads={args.threads}", f"progress={args.progress}", *dataset]
    cfg = make_cfg(overrides)
    if args.threads:  # the engine sets it too (device.threads); the hand loops run after it
        torch.set_num_threads(args.threads)
    data = load_data(cfg.dataset, cfg.seed)
    info = machine()
    print(f"{len(data.train)} training samples, {epochs} epochs, {args.repeats} repeats, "
          f"{info['torch_threads']} threads, load average {info['loadavg_start']}")

    runners: dict[str, Callable[[], Result]] = {
        "engine": lambda: run_engine(cfg), "hand": lambda: run_hand(cfg, data, False),
        "loader": lambda: run_hand(cfg, data, True)}
    wall: dict[str, list[float]] = {name: [] for name in runners}
    cpu: dict[str, list[float]] = {name: [] for name in runners}
    weights: dict[str, list[Weights]] = {name: [] for name in runners}
    engine_details: list[dict[str, float]] = []
    for r in range(args.repeats):
        for name in [*runners][r % 3:] + [*runners][:r % 3]:  # rotate the order every repeat
            (t, c), w, details = runners[name]()
            wall[name].append(t)
            cpu[name].append(c)
            weights[name].append(w)
            if details:
                engine_details.append(details)
            print(f"repeat {r + 1}/{args.repeats} {name:6s} {t:.4f} s/epoch ({c:.4f} CPU)", flush=True)

    best = {name: min(ts) for name, ts in wall.items()}
    best_cpu = {name: min(ts) for name, ts in cpu.items()}
    ref = weights["hand"][0]
    result = {
        "machine": {**info, "loadavg_end": os.getloadavg()},
        "settings": {"overrides": overrides, "train_samples": len(data.train), "epochs": epochs,
                     "batch_size": cfg.train.batch_size, "repeats": args.repeats,
                     "timed": "per variant, the best over repeats of its mean seconds per epoch; "
                              "engine: steps + end-of-epoch logging/checkpoints, no validation"},
        "seconds_per_epoch": {"best": best, "all": wall},
        "cpu_seconds_per_epoch": {"best": best_cpu, "all": cpu},
        "engine_details_best_run": engine_details[wall["engine"].index(best["engine"])],
        "ratio_engine_vs_hand": best["engine"] / best["hand"],
        "ratio_engine_vs_dataloader": best["engine"] / best["loader"],
        "ratio_dataloader_vs_hand": best["loader"] / best["hand"],
        "ratio_engine_steps_only_vs_hand": min(d["steps"] for d in engine_details) / best["hand"],
        "cpu_ratio_engine_vs_hand": best_cpu["engine"] / best_cpu["hand"],
        "cpu_ratio_dataloader_vs_hand": best_cpu["loader"] / best_cpu["hand"],
        "target_ratio": 1.05,
        "bit_identical": {
            "engine_vs_hand": all(identical(w, ref) for w in weights["engine"]),
            "dataloader_vs_hand": all(identical(w, ref) for w in weights["loader"]),
            "hand_repeats": all(identical(w, ref) for w in weights["hand"])},
    }
    result["meets_target"] = result["ratio_engine_vs_hand"] <= result["target_ratio"]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k.startswith(("ratio", "bit", "meets"))}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
