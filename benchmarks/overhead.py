"""Engine overhead: stagetrain's engine against a minimal hand-written PyTorch loop.

The same MLP, data, seed, data order, batches, optimizer and LR schedule are trained by

* ``engine`` -- ``stagetrain.runs.runner.train`` (strategy=scratch; metrics.jsonl, run.json and
  checkpoints at their defaults), its config composed through Hydra as the CLI does;
* ``hand`` -- a minimal loop over the same in-memory tensors (Adam fused, as the engine's): slice the epoch's
  permutation, normalise the batch, forward, cross-entropy, backward, Adam, LambdaLR;
* ``loader`` -- that loop fed by a ``torch.utils.data.DataLoader`` over a TensorDataset
  (per-sample indexing + collate, as most tutorials do), same batches in the same order;
* ``lightning`` -- PyTorch Lightning (``pip install -e ".[bench]"``): a LightningModule with
  the same model, Adam and schedule, ``Trainer.fit`` over a DataLoader of a TensorDataset of
  the normalised tensors (shuffled), the way its docs do it, logger, progress bar, model
  summary and checkpointing off, Adam as its docs build it; ``lightning_fused``: the same
  with the engine's fused Adam, to separate the optimizer from the framework's per-step
  cost. Skipped when lightning is not installed.

Runs are interleaved (the order rotates every repeat); each variant keeps its best mean
epoch time (wall clock) over the repeats. Timed per epoch: for the engine,
``Engine._train_epoch`` + ``Engine._end_epoch`` minus the validation pass inside it, i.e.
the steps plus the epoch's metrics lines, run.json, last.pt and best.pt (the methods are
wrapped with a timer here; the engine is unchanged); for the loops, the epoch's
permutation and its steps; for Lightning, from its train-epoch start to its end hook.
Not timed: reading data, building the model, validation.

    python benchmarks/overhead.py             # MNIST, MLP [256,128], 2 epochs, best of 7
    python benchmarks/overhead.py --quick     # scikit-learn digits: a smoke test
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from statistics import median
from types import SimpleNamespace
from typing import Any
from unittest import mock

import torch
import torch.nn.functional as F
from benchutil import machine
from hydra import compose, initialize_config_module
from omegaconf import DictConfig
from safetensors.torch import load_file
from torch.utils.data import DataLoader, TensorDataset

import stagetrain.app.cli  # noqa: F401  (registers the resolvers and schemas)
from stagetrain.data import DataBundle, epoch_permutation
from stagetrain.datasets import load_data
from stagetrain.engine import Engine
from stagetrain.families import build_spec
from stagetrain.models import StagedModel
from stagetrain.nn.optim import lr_factor
from stagetrain.runs.device import seed_everything
from stagetrain.runs.runner import train

REPO = Path(__file__).resolve().parents[1]
DATA_ROOT = Path(os.environ.get("STAGETRAIN_DATA", REPO.parent / "shared" / "data"))
Weights = dict[str, torch.Tensor]
TIMED = ("_train_epoch", "_end_epoch", "_evaluate")  # Engine methods timed, in that order
Result = tuple[float, Weights, dict[str, float]]  # seconds per epoch, final weights, details


@contextmanager
def engine_clock() -> Iterator[dict[str, float]]:
    """Seconds spent in the engine's epoch methods."""
    acc = dict.fromkeys((*TIMED, "epochs"), 0.0)

    def timed(name: str) -> Callable[..., Any]:
        fn = getattr(Engine, name)

        def wrapper(self: Engine, *args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return fn(self, *args, **kwargs)
            finally:  # _evaluate(None, split) is the final evaluation, outside the epochs
                if name != "_evaluate" or (args[0] if args else kwargs.get("stage")) is not None:
                    acc[name] += time.perf_counter() - start
                acc["epochs"] += name == "_end_epoch"

        return wrapper

    with ExitStack() as stack:
        for name in TIMED:
            stack.enter_context(mock.patch.object(Engine, name, timed(name)))
        yield acc


def run_engine(cfg: DictConfig) -> Result:
    """One ``train()`` call, timed per epoch as the module docstring says."""
    with tempfile.TemporaryDirectory() as tmp, engine_clock() as acc:
        start = time.perf_counter()
        info = train(cfg, tmp)
        wall = time.perf_counter() - start
        weights = load_file(str(Path(tmp) / "model.safetensors"))
    n = acc["epochs"]
    steps, end, val = (acc[name] / n for name in TIMED)
    details = {"steps": steps, "end_epoch_without_val": end - val, "val": val,
               "run_json_stage_seconds": info["stages"][0]["seconds"] / n, "train_call": wall}
    return steps + end - val, weights, details


def run_hand(cfg: DictConfig, data: DataBundle, use_loader: bool) -> Result:
    """The minimal loop: same init, permutation, batches, Adam and schedule as the engine."""
    seed_everything(cfg.seed)
    model = StagedModel(build_spec(cfg.model, data.in_shape, data.num_classes)).train()
    opt = torch.optim.Adam(model.parameters(), lr=cfg.optim.lr,  # fused, as the engine's (optim.fused)
                           weight_decay=cfg.optim.weight_decay, fused=bool(cfg.optim.fused))
    n, bs, epochs = len(data.train), cfg.train.batch_size, cfg.train.epochs
    steps = n // bs if n % bs == 1 and n > bs else -(-n // bs)  # a lone last sample is merged
    s = SimpleNamespace(**cfg.sched)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: lr_factor(
        s.name, i, epochs * steps, steps, s.warmup_epochs, s.step_size, s.gamma))
    dataset = TensorDataset(data.train.x, data.train.y)
    start = time.perf_counter()
    for epoch in range(epochs):
        perm = epoch_permutation(n, cfg.seed, 0, epoch, torch.device("cpu"))
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
    seconds = (time.perf_counter() - start) / epochs
    return seconds, {k: v.detach().clone() for k, v in model.state_dict().items()}, {}


def run_lightning(cfg: DictConfig, data: DataBundle, fused: bool) -> Result:
    """The same model, optimizer and schedule trained by Lightning's Trainer, as its docs do
    it (``fused=False``: Adam as its docs build it), or with the engine's fused Adam."""
    import lightning as L  # noqa: N812 - the name Lightning's docs use

    seed_everything(cfg.seed)
    model = StagedModel(build_spec(cfg.model, data.in_shape, data.num_classes))
    n, bs, epochs = len(data.train), cfg.train.batch_size, cfg.train.epochs
    steps = -(-n // bs)
    s = SimpleNamespace(**cfg.sched)

    class Module(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            return F.cross_entropy(self.model(x), y)

        def configure_optimizers(self) -> Any:
            opt = torch.optim.Adam(self.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay,
                                   **({"fused": True} if fused else {}))
            sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: lr_factor(
                s.name, i, epochs * steps, steps, s.warmup_epochs, s.step_size, s.gamma))
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    class EpochClock(L.Callback):
        def __init__(self) -> None:
            self.seconds: list[float] = []

        def on_train_epoch_start(self, trainer: Any, module: Any) -> None:
            self.start = time.perf_counter()

        def on_train_epoch_end(self, trainer: Any, module: Any) -> None:
            self.seconds.append(time.perf_counter() - self.start)

    loader = DataLoader(TensorDataset(data.normalize(data.train.x), data.train.y), batch_size=bs, shuffle=True)
    clock = EpochClock()
    trainer = L.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False,
                        enable_progress_bar=False, enable_checkpointing=False, enable_model_summary=False,
                        callbacks=[clock])
    trainer.fit(Module(), loader)
    return sum(clock.seconds) / len(clock.seconds), {k: v.detach().clone() for k, v in model.state_dict().items()}, {}


def identical(a: Weights, b: Weights) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="digits instead of MNIST (a smoke test)")
    p.add_argument("--repeats", type=int, default=7, help="runs of each variant; the best is kept")
    p.add_argument("--epochs", type=int, default=None, help="default: 2 (MNIST), 5 (--quick)")
    p.add_argument("--widths", default="[256,128]", help="MLP hidden widths")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default)")
    p.add_argument("--progress", default="plain", help="engine progress: auto|rich|plain|off")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "overhead.json")
    args = p.parse_args()
    epochs = args.epochs or (5 if args.quick else 2)
    dataset = ["dataset=digits"] if args.quick else ["dataset=mnist", f"dataset.root={DATA_ROOT}"]
    overrides = ["strategy=scratch", "device=cpu", f"model.widths={args.widths}",
                 f"train.epochs={epochs}", f"device.threads={args.threads}",
                 f"progress={args.progress}", *dataset]
    with initialize_config_module("stagetrain.conf", version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    if args.threads:  # train() sets the same (device.threads); the loops may run before it
        torch.set_num_threads(args.threads)
    data = load_data(cfg.dataset, cfg.seed)
    info = machine()
    print(f"{len(data.train)} training samples, {epochs} epochs, {args.repeats} repeats, "
          f"{info['torch_threads']} threads, load average {info['loadavg_start']}", flush=True)

    runners: dict[str, Callable[[], Result]] = {  # see the module docstring
        "engine": lambda: run_engine(cfg), "hand": lambda: run_hand(cfg, data, False),
        "loader": lambda: run_hand(cfg, data, True)}
    if importlib.util.find_spec("lightning") is not None:
        runners["lightning"] = lambda: run_lightning(cfg, data, False)
        runners["lightning_fused"] = lambda: run_lightning(cfg, data, True)
    order = list(runners)
    runs: dict[str, list[Result]] = {name: [] for name in order}
    for r in range(args.repeats):
        for name in order[r % len(order):] + order[:r % len(order)]:  # rotate every repeat
            runs[name].append(runners[name]())
            print(f"repeat {r + 1}/{args.repeats} {name:10s} {runs[name][-1][0]:.4f} s/epoch",
                  flush=True)

    wall = {name: [t for t, _, _ in rs] for name, rs in runs.items()}
    best = {name: min(ts) for name, ts in wall.items()}
    pairs = [("engine", "hand"), ("engine", "loader"), ("loader", "hand")]
    if "lightning" in runs:
        pairs += [("lightning", "engine"), ("lightning_fused", "engine")]
    engine_runs = {"engine": [d for _, _, d in runs["engine"]]}
    result = {
        "machine": {**info, "loadavg_end": os.getloadavg()},
        "settings": {"overrides": overrides, "train_samples": len(data.train), "epochs": epochs,
                     "batch_size": cfg.train.batch_size, "repeats": args.repeats,
                     "timed": "per variant, the best over repeats of its mean seconds per epoch;"
                              " engine: steps + end-of-epoch logging/checkpoints, no validation"},
        "target_ratio": 1.05,
        "meets_target": best["engine"] / best["hand"] <= 1.05,
        "lightning_target_ratio": 1.8,  # Lightning's time per epoch / the engine's
        "meets_lightning_target": best["lightning"] / best["engine"] >= 1.8 if "lightning" in best else None,
        "ratio": {f"{a}_vs_{b}": best[a] / best[b] for a, b in pairs},
        "median_paired_ratio": {  # a and b timed in the same repeat: similar machine load
            f"{a}_vs_{b}": median(x / y for x, y in zip(wall[a], wall[b], strict=True))
            for a, b in pairs},
        "ratio_steps_only": {name: min(d["steps"] for d in ds) / best["hand"]
                             for name, ds in engine_runs.items()},
        "bit_identical": {name: all(identical(w, runs["hand"][0][1]) for _, w, _ in rs)
                          for name, rs in runs.items() if not name.startswith("lightning")},  # it shuffles its own way
        "seconds_per_epoch": {"best": best, "all": wall},
        "engine_details_best_run": engine_runs["engine"][wall["engine"].index(best["engine"])],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for key in ("ratio", "median_paired_ratio", "ratio_steps_only", "bit_identical"):
        print(f"{key}: {json.dumps(result[key])}")
    print(f"engine/hand <= 1.05: {result['meets_target']}; lightning/engine >= 1.8: "
          f"{result['meets_lightning_target']}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
