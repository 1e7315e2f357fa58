"""Scaling: time per epoch for 1 vs 2 DDP processes on the CPU, and the GPU fast path.

CPU part (always). The same scratch MLP run, launched as the CLI would be:

* ``single_2t`` -- ``stagetrain`` in one process with 2 torch threads (all of this machine);
* ``single_1t`` -- one process, 1 thread;
* ``ddp_1``     -- ``torchrun --nproc-per-node 1``, 1 thread: with WORLD_SIZE=1 stagetrain runs
  its plain single-process path, so this is ``single_1t`` under torchrun (a control);
* ``ddp_2``     -- ``torchrun --nproc-per-node 2`` (gloo, 1 thread per rank, half the global
  batch per rank).

An epoch's time is the training seconds the engine records per epoch (``time`` in
metrics.jsonl: the steps, including DDP's gradient all-reduce and the per-step agreement;
not evaluation or checkpoints); each run's number is the median over its epochs after the
first, each variant keeps its best run over the repeats (interleaved). Start-up (torchrun,
imports, rendezvous) is reported separately as the process wall time. With 2 cores, 2
processes can at best match 1 process using 2 threads: this measures the overhead of the
DDP path, not a speed-up.

GPU part (only when ``torch.cuda.is_available()``), in this process through ``train``:

* MNIST MLP 784-500-500-2000-10, batch 512: epoch time eager and with ``device.compile``
  (targets on an H100-class GPU: <= 25 ms eager, <= 6 ms compiled); real MNIST when the
  files are there, else synthetic data of the same shape and size;
* a small CNN on CIFAR-10-shaped synthetic data (50,000 x 3x32x32), bf16 + compile: the
  achieved training FLOP/s (the engine's measured FLOPs: matmuls and convolutions) as a
  fraction of the GPU's dense bf16 peak (target >= 20%).

GPU epochs are timed around ``Engine._train_epoch`` with ``torch.cuda.synchronize()``
on both sides (the engine itself does not synchronise); the first epoch (compilation,
CUDA graph capture) is left out.

    python benchmarks/scaling.py            # CPU: MNIST subset, 3 epochs, best of 2 (about 5 min on idle cores)
    python benchmarks/scaling.py --quick    # digits, 1 repeat: a smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from unittest import mock

import torch
from benchutil import DATA_ROOT, RESULTS, RUN_ROOT, machine, make_cfg, no_run_plots, write_json

import stagetrain.engine as engine_module
from stagetrain.runs.rundir import read_metrics
from stagetrain.runs.runner import train

BIN = Path(sys.executable).parent
CPU_RUN = ["strategy=scratch", "device=cpu", "progress=off", "plots=false", "model.widths=[256,128]",
           "train.batch_size=128", "train.epochs=3", "dataset=mnist", "dataset.max_train=4000",
           f"dataset.root={DATA_ROOT}"]
CPU_QUICK = ["strategy=scratch", "device=cpu", "progress=off", "plots=false", "train.epochs=3"]
VARIANTS = {
    "single_2t": ([str(BIN / "stagetrain")], {"OMP_NUM_THREADS": "2"}, ["device.threads=2"]),
    "single_1t": ([str(BIN / "stagetrain")], {"OMP_NUM_THREADS": "1"}, ["device.threads=1"]),
    "ddp_1": ([str(BIN / "torchrun"), "--nproc-per-node", "1", str(BIN / "stagetrain")],
              {"OMP_NUM_THREADS": "1"}, []),
    "ddp_2": ([str(BIN / "torchrun"), "--nproc-per-node", "2", str(BIN / "stagetrain")],
              {"OMP_NUM_THREADS": "1"}, []),
}
# dense (no sparsity) bf16 tensor-core peak FLOP/s by device name, from the vendors' data sheets
BF16_PEAK = {"H200": 989e12, "H100 NVL": 835e12, "H100 PCIe": 756e12, "H100": 989e12,
             "A100": 312e12, "L40S": 362e12, "L4": 121e12, "A10": 125e12, "RTX 4090": 165e12}


def epoch_seconds(run: Path) -> list[float]:
    """Training seconds of each epoch, from the cumulative ``time`` of the val lines."""
    times = [e["time"] for e in read_metrics(run / "metrics.jsonl") if e.get("split") == "val"]
    return [b - a for a, b in zip([0.0, *times[:-1]], times, strict=True)]


def cpu_run(variant: str, overrides: list[str], root: Path) -> dict[str, Any]:
    launcher, env, extra = VARIANTS[variant]
    run = Path(tempfile.mkdtemp(prefix=f"{variant}-", dir=root)) / "run"
    start = time.perf_counter()
    proc = subprocess.run([*launcher, *overrides, *extra, f"hydra.run.dir={run}"], capture_output=True,
                          text=True, env={**os.environ, **env}, timeout=900)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{variant} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    info = json.loads((run / "run.json").read_text())
    epochs = epoch_seconds(run)
    return {"epoch_seconds": epochs, "median_epoch_s": statistics.median(epochs[1:] or epochs),
            "process_wall_s": wall, "test_acc": info["final"]["test/acc"], "flops": info["flops"],
            "world_size": info.get("distributed", {}).get("world_size", 1)}


def cpu_part(quick: bool, repeats: int) -> dict[str, Any]:
    overrides = CPU_QUICK if quick else CPU_RUN
    runs: dict[str, list[dict[str, Any]]] = {v: [] for v in VARIANTS}
    with tempfile.TemporaryDirectory(dir=RUN_ROOT) as root:
        for r in range(repeats):
            order = list(VARIANTS)[r % len(VARIANTS):] + list(VARIANTS)[:r % len(VARIANTS)]
            for variant in order:
                out = cpu_run(variant, overrides, Path(root))
                runs[variant].append(out)
                print(f"[cpu] {variant:10s} epoch {out['median_epoch_s'] * 1000:8.1f} ms  "
                      f"process {out['process_wall_s']:.1f} s  test acc {out['test_acc']:.4f}", flush=True)
    best = {v: min(r["median_epoch_s"] for r in rs) for v, rs in runs.items()}
    return {"overrides": overrides, "best_epoch_s": best,
            "ddp_2_vs_single_2t": best["ddp_2"] / best["single_2t"],
            "ddp_1_vs_single_1t": best["ddp_1"] / best["single_1t"], "runs": runs}


def timed_epochs() -> tuple[list[float], Any]:
    """Patch Engine._train_epoch to record its synchronised wall time."""
    seconds: list[float] = []
    original = engine_module.Engine._train_epoch

    def timed(self, *args, **kwargs):
        torch.cuda.synchronize()
        start = time.perf_counter()
        original(self, *args, **kwargs)
        torch.cuda.synchronize()
        seconds.append(time.perf_counter() - start)

    return seconds, mock.patch.object(engine_module.Engine, "_train_epoch", timed)


def gpu_run(overrides: list[str], root: Path) -> dict[str, Any]:
    seconds, patch = timed_epochs()
    run = Path(tempfile.mkdtemp(dir=root)) / "run"
    with patch, no_run_plots():
        info = train(make_cfg(*overrides), run)
    flops_per_epoch = info["flops"] / len(seconds)
    epoch = statistics.median(seconds[1:])
    return {"epoch_seconds": seconds, "median_epoch_s": epoch, "flops_per_epoch": flops_per_epoch,
            "flop_per_s": flops_per_epoch / epoch, "test_acc": info["final"]["test/acc"],
            "device": torch.cuda.get_device_name()}


def gpu_part(quick: bool) -> dict[str, Any]:
    name = torch.cuda.get_device_name()
    peak = next((v for k, v in BF16_PEAK.items() if k in name), None)
    mnist = (["dataset=mnist", f"dataset.root={DATA_ROOT}", "dataset.val_fraction=0.0001"]
             if (DATA_ROOT / "MNIST" / "raw" / "train-images-idx3-ubyte").exists() else
             ["dataset=synthetic", "dataset.shape=[1,28,28]", "dataset.n_train=60000"])
    epochs = 3 if quick else 6
    mlp = ["device=cuda", "strategy=scratch", "model.widths=[500,500,2000]", "train.batch_size=512",
           f"train.epochs={epochs}", "plots=false", *mnist]
    cnn = ["device=cuda", "strategy=scratch", "model=cnn", "model.channels=[128,256,512]",
           "dataset=synthetic", "dataset.shape=[3,32,32]", "dataset.n_train=50000", "dataset.n_test=1000",
           "train.batch_size=512", f"train.epochs={epochs}", "device.precision=bf16", "device.compile=true",
           "plots=false"]
    out: dict[str, Any] = {"device": name, "bf16_peak_flop_per_s": peak}
    with tempfile.TemporaryDirectory(dir=RUN_ROOT) as root:
        for key, overrides in (("mlp_eager", mlp), ("mlp_compiled", [*mlp, "device.compile=true"]),
                               ("mlp_compiled_bf16", [*mlp, "device.compile=true", "device.precision=bf16"]),
                               ("cnn_bf16_compiled", cnn)):
            r = gpu_run(overrides, Path(root))
            if peak is not None:
                r["fraction_of_bf16_peak"] = r["flop_per_s"] / peak
            out[key] = r
            print(f"[gpu] {key:18s} epoch {r['median_epoch_s'] * 1000:8.2f} ms  "
                  f"{r['flop_per_s'] / 1e12:7.2f} TFLOP/s  test acc {r['test_acc']:.4f}", flush=True)
    out["targets"] = {"mlp_eager_ms": 25, "mlp_compiled_ms": 6, "cnn_fraction_of_peak": 0.20}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="digits, 1 repeat: a smoke test")
    p.add_argument("--repeats", type=int, default=None, help="CPU repeats per variant (default 2, 1 with --quick)")
    p.add_argument("--skip-cpu", action="store_true", help="only the GPU part")
    p.add_argument("--out", type=Path, default=RESULTS / "scaling.json")
    args = p.parse_args()
    start = time.perf_counter()
    result: dict[str, Any] = {"machine": machine(), "quick": args.quick}
    if torch.cuda.is_available():
        result["machine"]["gpu"] = torch.cuda.get_device_name()
    if not args.skip_cpu:
        result["cpu"] = cpu_part(args.quick, args.repeats or (1 if args.quick else 2))
    result["gpu"] = gpu_part(args.quick) if torch.cuda.is_available() else "not run: no CUDA GPU here"
    result["machine"]["loadavg_end"] = os.getloadavg()
    result["total_seconds"] = time.perf_counter() - start
    out = args.out if not args.quick else args.out.with_name(args.out.stem + "_quick.json")
    write_json(out, result)
    print(f"total {result['total_seconds']:.0f} s")


if __name__ == "__main__":
    main()
