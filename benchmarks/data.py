"""Data paths: MNIST MLP epoch time in memory vs streamed vs a plain torchvision DataLoader loop.

The same MLP, seed and optimizer train one epoch per run; timed is the epoch's steps:

* ``memory`` -- the engine (``stagetrain.runs.runner.train``, strategy=scratch) with
  ``dataset.storage=memory``: a batch is an index gather from the in-memory tensor;
* ``stream_w0`` / ``stream_w2`` -- the same engine with ``dataset.storage=stream`` and 0 or 2
  loader workers: batches read from the IDX file (memory map) through a DataLoader fed
  the epoch permutation's batches;
* ``plain_w0`` / ``plain_w2`` -- the loop most tutorials write: torchvision ``MNIST`` with
  ``ToTensor`` + ``Normalize``, ``DataLoader(batch_size, shuffle=True, num_workers=w)``,
  forward, cross-entropy, backward, Adam (fused, as the engine's), LambdaLR -- the plain
  torchvision DataLoader loop;
* ``reader_w0`` / ``reader_w2`` -- that loop over a DataLoader of the very reader streaming
  uses (the memory-mapped IDX file, (image, label) per index, normalised per batch): the
  plain DataLoader loop that streaming wraps, without the engine.

For the engine the timer wraps ``Engine._train_epoch`` (the steps; no validation, no
checkpoint); for the plain loop, its epoch. Runs are interleaved (the order rotates every
repeat); each variant keeps its best. Ratios are against the plain loop with the same
workers, measured in the same run. Targets: memory >= 1.5x faster than ``plain_w0``;
``stream_wN`` <= 1.3x ``plain_wN`` (and, the stricter reading, ``reader_wN``).

    python benchmarks/data.py                 # MNIST (54,000 training images), 1 epoch, best of 3
    python benchmarks/data.py --max-train 5000 --repeats 1   # a smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from statistics import median
from unittest import mock

import torch
import torch.nn.functional as F
from benchutil import DATA_ROOT, REPO, RUN_ROOT, machine, make_cfg, no_run_plots

from stagetrain.engine import Engine
from stagetrain.families import build_spec
from stagetrain.models import StagedModel
from stagetrain.runs.device import seed_everything
from stagetrain.runs.runner import train

Timing = tuple[float, float]  # (wall seconds, this process's CPU seconds) of one epoch


def run_engine(overrides: list[str]) -> Timing:
    """Seconds of the engine's training epoch (steps only)."""
    spent: list[Timing] = []
    original = Engine._train_epoch

    def timed(self, *args):
        wall, cpu = time.perf_counter(), time.process_time()
        original(self, *args)
        spent.append((time.perf_counter() - wall, time.process_time() - cpu))

    with tempfile.TemporaryDirectory(dir=RUN_ROOT) as tmp, no_run_plots(), \
            mock.patch.object(Engine, "_train_epoch", timed):
        train(make_cfg(*overrides), Path(tmp) / "run")
    return spent[0]


class ReaderPairs(torch.utils.data.Dataset):
    """(image, label) of MNIST's training file through streaming's reader (data.images.IdxReader)."""

    def __init__(self) -> None:
        from stagetrain.data.images import IdxReader

        raw = DATA_ROOT / "MNIST" / "raw"
        self.y = torch.frombuffer(bytearray((raw / "train-labels-idx1-ubyte").read_bytes()[8:]), dtype=torch.uint8)
        self.reader = IdxReader(raw / "train-images-idx3-ubyte", len(self.y), (1, 28, 28))

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.reader[i], int(self.y[i])


def run_plain(overrides: list[str], workers: int, max_train: int | None, reader: bool = False) -> Timing:
    """Seconds of one epoch of the tutorial loop: torchvision MNIST + transforms + DataLoader
    (``reader``: streaming's reader instead, normalised per batch)."""
    from torchvision import datasets, transforms

    cfg = make_cfg(*overrides)
    tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))])
    data = ReaderPairs() if reader else datasets.MNIST(str(DATA_ROOT), train=True, transform=tf)
    if max_train is not None:
        data = torch.utils.data.Subset(data, range(max_train))
    seed_everything(cfg.seed)
    model = StagedModel(build_spec(cfg.model, (1, 28, 28), 10)).train()
    opt = torch.optim.Adam(model.parameters(), lr=cfg.optim.lr, fused=True)
    loader = torch.utils.data.DataLoader(data, batch_size=cfg.train.batch_size, shuffle=True, num_workers=workers)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 1.0)
    wall, cpu = time.perf_counter(), time.process_time()
    for x, y in loader:
        if reader:
            x = (x.float() / 255 - 0.1307) / 0.3081
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=3, help="runs of each variant; the best is kept")
    p.add_argument("--widths", default="[256,128]", help="MLP hidden widths")
    p.add_argument("--max-train", type=int, default=None, help="fewer training images (smoke test)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads of the training process")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "data.json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    base = ["strategy=scratch", "dataset=mnist", f"dataset.root={DATA_ROOT}", f"model.widths={args.widths}",
            "train.epochs=1", f"device.threads={args.threads}", "checkpoint.stage_checkpoints=false"]
    if args.max_train:
        base.append(f"dataset.max_train={args.max_train}")
    # the plain loop trains on all of its images; the engine on train minus its validation split
    plain_n = args.max_train or 54_000
    runners: dict[str, Callable[[], Timing]] = {
        "memory": lambda: run_engine([*base, "dataset.storage=memory"]),
        "stream_w0": lambda: run_engine([*base, "dataset.storage=stream", "dataset.workers=0"]),
        "stream_w2": lambda: run_engine([*base, "dataset.storage=stream", "dataset.workers=2"]),
        "plain_w0": lambda: run_plain(base, 0, plain_n),
        "plain_w2": lambda: run_plain(base, 2, plain_n),
        "reader_w0": lambda: run_plain(base, 0, plain_n, reader=True),
        "reader_w2": lambda: run_plain(base, 2, plain_n, reader=True),
    }
    info = machine()
    order = list(runners)
    wall: dict[str, list[float]] = {name: [] for name in order}
    cpu: dict[str, list[float]] = {name: [] for name in order}
    for r in range(args.repeats):
        for name in order[r % len(order):] + order[:r % len(order)]:
            w, c = runners[name]()
            wall[name].append(w)
            cpu[name].append(c)
            print(f"repeat {r + 1}/{args.repeats} {name:10s} {w:.3f} s/epoch ({c:.3f} s CPU)", flush=True)
    best = {name: min(ts) for name, ts in wall.items()}
    pairs = [("plain_w0", "memory"), ("stream_w0", "plain_w0"), ("stream_w2", "plain_w2"),
             ("stream_w0", "reader_w0"), ("stream_w2", "reader_w2"), ("stream_w0", "memory"),
             ("stream_w2", "memory"), ("reader_w0", "memory")]
    ratio = {f"{a}_vs_{b}": best[a] / best[b] for a, b in pairs}
    result = {
        "machine": {**info, "loadavg_end": os.getloadavg()},
        "settings": {"base": base, "train_samples": plain_n, "repeats": args.repeats,
                     "timed": "best over repeats of one epoch's steps (engine: Engine._train_epoch)"},
        "seconds_per_epoch": {"best": best, "all": wall},
        # the training process's CPU seconds: less sensitive to a busy machine, but blind to workers
        "cpu_seconds_per_epoch": {"best": {name: min(ts) for name, ts in cpu.items()}, "all": cpu},
        "cpu_ratio_w0": {f"{a}_vs_{b}": min(cpu[a]) / min(cpu[b]) for a, b in pairs if "w2" not in a + b},
        "ratio": ratio,
        "median_paired_ratio": {f"{a}_vs_{b}": median(x / y for x, y in zip(wall[a], wall[b], strict=True))
                                for a, b in pairs},
        "targets": {"plain_w0_vs_memory >= 1.5": ratio["plain_w0_vs_memory"] >= 1.5,
                    "stream_w0_vs_plain_w0 <= 1.3": ratio["stream_w0_vs_plain_w0"] <= 1.3,
                    "stream_w2_vs_plain_w2 <= 1.3": ratio["stream_w2_vs_plain_w2"] <= 1.3,
                    "stream_w0_vs_reader_w0 <= 1.3": ratio["stream_w0_vs_reader_w0"] <= 1.3,
                    "stream_w2_vs_reader_w2 <= 1.3": ratio["stream_w2_vs_reader_w2"] <= 1.3},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({key: result[key] for key in ("ratio", "cpu_ratio_w0", "targets")}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
