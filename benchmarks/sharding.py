"""Memory per rank and step time: DDP (``device.shard=none``) against FSDP2 (``device.shard=fsdp``),
2 ranks under torchrun on the CPU (gloo), and on all visible GPUs (NCCL) when there are two or more.

Each arm is the same ``stagetrain`` scratch run of a Transformer (``model=transformer``, digits
as 4 patch tokens: a model large enough that parameters, gradients and Adam state dominate what
a rank holds), started as ``torchrun --nproc-per-node N benchmarks/sharding.py --worker ...``:
every rank composes the config through Hydra's compose API and runs
``stagetrain.runs.runner.train`` itself, with these measurements around it:

* ``state_bytes`` -- exact: after an optimizer step (``register_optimizer_step_post_hook``),
  the bytes this rank holds of the trained parameters, their gradients and the optimizer's
  state, each tensor counted by its local shard (``DTensor.to_local()``) under FSDP, whole
  under DDP; the largest of the first three steps. ``sharded`` says whether FSDP was active.
* ``rss_peak`` -- the process's resident-set high-water mark (``ru_maxrss``), and
  ``rss_delta`` = that peak minus the resident set just before ``train`` (after imports):
  what the run itself added at its worst moment, transient all-gathers and evaluation copies
  included. CUDA: ``torch.cuda.max_memory_allocated`` instead.
* ``preflight`` -- ``stagetrain.runs.preflight``'s per-rank estimate of the same run (weights,
  gradients, Adam state; the gathered term; activations), to check the estimate against the
  measurement.
* ``step_s`` -- training seconds per step from rank 0's metrics.jsonl (cumulative ``time`` and
  ``step`` of the epochs after the first: no evaluation, no checkpoints).

Ratios are FSDP / DDP of the same quantity, both arms measured in this run; arms alternate
(DDP first on even repeats). Memory numbers are deterministic up to allocator noise; step
times on this shared machine carry the usual +-10-20%.

    python benchmarks/sharding.py            # d_model 512, 8 layers (25M parameters), 2 repeats: ~5 min on 2 cores
    python benchmarks/sharding.py --quick    # d_model 64, 2 layers, 1 repeat: a smoke test
    python benchmarks/sharding.py --arms ddp # one arm only
    python benchmarks/sharding.py --arms ddp,fsdp,fsdp_reshard   # with the what-if arm
    python benchmarks/sharding.py --mmap-threshold 65536 --out benchmarks/results/sharding_mmap.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

SIZES = {"full": {"d_model": 512, "n_layers": 8, "n_heads": 8, "batch": 64, "max_train": 640, "epochs": 3},
         "quick": {"d_model": 64, "n_layers": 2, "n_heads": 4, "batch": 32, "max_train": 256, "epochs": 2},
         "gpu": {"d_model": 1024, "n_layers": 8, "n_heads": 16, "batch": 256, "max_train": 1280, "epochs": 3}}
ARMS = {"ddp": "device.shard=none", "fsdp": "device.shard=fsdp", "fsdp_reshard": "device.shard=fsdp"}
# what-if arms: the engine's own code with one PyTorch default changed in the worker process
WHAT_IF = {"fsdp_reshard": "fully_shard(..., reshard_after_forward=True): every unit, the root (the stage "
                           "step) included, frees its gathered parameters after its forward (FSDP2 keeps a "
                           "root's parameters gathered from forward to backward by default)"}


def overrides(size: dict[str, int], arm: str, device: str) -> list[str]:
    return ["strategy=scratch", "model=transformer", f"model.d_model={size['d_model']}",
            f"model.n_heads={size['n_heads']}", f"model.n_layers={size['n_layers']}",
            f"train.batch_size={size['batch']}", f"dataset.max_train={size['max_train']}",
            f"train.epochs={size['epochs']}", f"device={device}", "device.threads=1", "plots=false",
            "progress=off", ARMS[arm]]


# ------------------------------------------------------------------ one rank (under torchrun)
def _local_bytes(t: Any) -> int:
    import torch
    from torch.distributed.tensor import DTensor

    if not torch.is_tensor(t):
        return 0
    local = t.to_local() if isinstance(t, DTensor) else t
    return local.numel() * local.element_size()


def _rss(field: str = "VmRSS") -> int:
    """This process's resident set (``VmHWM``: its high-water mark so far), bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def worker(args: argparse.Namespace) -> None:
    import torch
    from benchutil import make_cfg, no_run_plots
    from torch.distributed.tensor import DTensor
    from torch.optim.optimizer import register_optimizer_step_post_hook

    from stagetrain.datasets import dataset_meta
    from stagetrain.runs import preflight
    from stagetrain.runs.config import validate
    from stagetrain.runs.parts import initial_spec
    from stagetrain.runs.runner import train

    rank = int(os.environ.get("RANK", "0"))
    seen: list[dict[str, Any]] = []
    if args.what_if == "fsdp_reshard":
        import torch.distributed.fsdp as fsdp

        original = fsdp.fully_shard

        def resharding(module: Any, **kwargs: Any) -> Any:
            kwargs.setdefault("reshard_after_forward", True)
            return original(module, **kwargs)

        fsdp.fully_shard = resharding

    def measure(optimizer: torch.optim.Optimizer, *_: Any) -> None:
        if len(seen) >= 3:
            return
        params = [p for g in optimizer.param_groups for p in g["params"]]
        state = [v for p in params for v in optimizer.state.get(p, {}).values()]
        seen.append({"params": sum(_local_bytes(p) for p in params),
                     "grads": sum(_local_bytes(p.grad) for p in params if p.grad is not None),
                     "optimizer": sum(_local_bytes(v) for v in state),
                     "sharded": any(isinstance(p, DTensor) for p in params), "hwm": _rss("VmHWM")})

    register_optimizer_step_post_hook(measure)
    cfg = make_cfg(*args.overrides)
    settings = validate(cfg)
    shape, classes, n_train, _ = dataset_meta(settings.dataset)
    spec = initial_spec(settings, shape, classes)
    batch = min(int(settings.train.batch_size), n_train)
    estimate = preflight.meta_memory(spec, batch, 0, preflight.shard_count(settings.device))
    cuda = settings.device.name == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    before = _rss()
    with no_run_plots():
        train(cfg, Path(args.run_dir))
    best = max(seen, key=lambda s: s["params"] + s["grads"] + s["optimizer"]) if seen else {}
    best = {k: v for k, v in best.items() if k != "hwm"}
    out = {"rank": rank, "rss_before": before, "rss_peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
           "state": best, "state_bytes": sum(best.get(k, 0) for k in ("params", "grads", "optimizer")),
           # the high-water mark after 3 training steps: training alone, before any evaluation or checkpoint
           "rss_delta_training": (seen[-1]["hwm"] - before) if seen else None,
           "sharded": best.get("sharded", False), "params": estimate.params,
           "preflight": {"state": estimate.state, "gathered": estimate.gathered, "activations": estimate.activations,
                         "device": estimate.device}}
    out["rss_delta"] = out["rss_peak"] - before
    if cuda:
        out["cuda_max_allocated"] = torch.cuda.max_memory_allocated()
    Path(args.worker_out, f"rank{rank}.json").write_text(json.dumps(out))


# ------------------------------------------------------------------ the driver
def step_seconds(run: Path) -> float:
    """Median seconds per training step over the epochs after the first (rank 0's metrics)."""
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    train = [e for e in lines if e.get("split") == "train"]
    per = [(b["time"] - a["time"]) / (b["step"] - a["step"]) for a, b in zip(train, train[1:], strict=False)
           if b["step"] > a["step"]]
    return statistics.median(per) if per else train[-1]["time"] / train[-1]["step"]


def run_arm(arm: str, size: dict[str, int], device: str, nproc: int, root: Path, env: dict[str, str]) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix=f"{arm}-", dir=root))
    exe = Path(sys.executable).parent
    command = [str(exe / "torchrun"), "--nproc-per-node", str(nproc), str(Path(__file__).resolve()), "--worker",
               "--run-dir", str(work / "run"), "--worker-out", str(work), "--what-if", arm if arm in WHAT_IF else "",
               "--", *overrides(size, arm, device)]
    start = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, timeout=1800,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **env})
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{arm} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    ranks = [json.loads((work / f"rank{r}.json").read_text()) for r in range(nproc)]
    info = json.loads((work / "run" / "run.json").read_text())
    return {"ranks": ranks, "step_s": step_seconds(work / "run"), "process_wall_s": wall,
            "status": info["status"], "test_acc": info["final"].get("test/acc"),
            "world_size": info.get("distributed", {}).get("world_size", 1)}


def summarise(runs: dict[str, list[dict[str, Any]]], cuda: bool) -> dict[str, Any]:
    """Per arm: the largest rank's numbers (memory: the worst repeat; step time: the best)."""
    peak_key = "cuda_max_allocated" if cuda else "rss_delta"
    out: dict[str, Any] = {}
    for arm, rs in runs.items():
        out[arm] = {"state_bytes_per_rank": max(r["state_bytes"] for x in rs for r in x["ranks"]),
                    "peak_bytes_per_rank": max(r[peak_key] for x in rs for r in x["ranks"]),
                    # rank 0 also writes the checkpoints; the other ranks only train
                    "peak_bytes_by_rank": [max(x["ranks"][k][peak_key] for x in rs) for k in range(len(rs[0]["ranks"]))],
                    "training_peak_bytes_per_rank": None if cuda else max(r["rss_delta_training"] for x in rs
                                                                          for r in x["ranks"]),
                    "rss_peak_per_rank": max(r["rss_peak"] for x in rs for r in x["ranks"]),
                    "preflight_state_per_rank": rs[0]["ranks"][0]["preflight"]["state"],
                    "preflight_device_per_rank": rs[0]["ranks"][0]["preflight"]["device"],
                    "sharded": all(r["sharded"] for x in rs for r in x["ranks"]),
                    "step_s": min(x["step_s"] for x in rs), "params": rs[0]["ranks"][0]["params"]}
    for arm in [a for a in out if a != "ddp" and "ddp" in out]:
        out[f"{arm}_vs_ddp"] = {k: out[arm][k] / out["ddp"][k] for k in
                                ("state_bytes_per_rank", "peak_bytes_per_rank", "training_peak_bytes_per_rank",
                                 "rss_peak_per_rank", "step_s") if out[arm][k] is not None}
        out[f"{arm}_vs_ddp"]["peak_bytes_by_rank"] = [a / b for a, b in zip(out[arm]["peak_bytes_by_rank"],
                                                                           out["ddp"]["peak_bytes_by_rank"], strict=True)]
    return out


def part(name: str, size: dict[str, int], device: str, nproc: int, arms: list[str], repeats: int,
         root: Path, env: dict[str, str]) -> dict[str, Any]:
    runs: dict[str, list[dict[str, Any]]] = {a: [] for a in arms}
    for r in range(repeats):
        for arm in (arms if r % 2 == 0 else arms[::-1]):
            out = run_arm(arm, size, device, nproc, root, env)
            runs[arm].append(out)
            mb = [round(x["state_bytes"] / 2**20, 1) for x in out["ranks"]]
            print(f"[{name}] {arm:4s} state/rank {mb} MiB  peak/rank "
                  f"{[round(x.get('cuda_max_allocated', x['rss_delta']) / 2**20) for x in out['ranks']]} MiB  "
                  f"training peak/rank {[round((x['rss_delta_training'] or 0) / 2**20) for x in out['ranks']]} MiB  "
                  f"step {out['step_s'] * 1000:.0f} ms  sharded {out['ranks'][0]['sharded']}", flush=True)
    return {"size": size, "nproc": nproc, "device": device, "summary": summarise(runs, device == "cuda"),
            "runs": runs}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="a small Transformer, 1 repeat: a smoke test")
    p.add_argument("--repeats", type=int, default=None, help="repeats per arm (default 2, 1 with --quick)")
    p.add_argument("--arms", default="ddp,fsdp", help="comma-separated: ddp, fsdp, fsdp_reshard (a what-if)")
    p.add_argument("--skip-cpu", action="store_true", help="only the GPU part")
    p.add_argument("--mmap-threshold", type=int, default=0,
                   help="MALLOC_MMAP_THRESHOLD_ for the ranks (glibc: blocks from this size are returned to the "
                        "system when freed, so RSS follows live memory); 0: glibc's default (adaptive)")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--run-dir", help=argparse.SUPPRESS)
    p.add_argument("--worker-out", help=argparse.SUPPRESS)
    p.add_argument("--what-if", default="", help=argparse.SUPPRESS)
    p.add_argument("overrides", nargs="*", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)
    import torch
    from benchutil import RESULTS, RUN_ROOT, machine, write_json

    arms = [a for a in args.arms.split(",") if a]
    if not arms or set(arms) - set(ARMS):
        p.error(f"--arms: a comma-separated list of {', '.join(ARMS)}")
    repeats = args.repeats or (1 if args.quick else 2)
    env = {"MALLOC_MMAP_THRESHOLD_": str(args.mmap_threshold)} if args.mmap_threshold else {}
    start = time.perf_counter()
    result: dict[str, Any] = {"machine": machine(), "quick": args.quick, "arms": {a: ARMS[a] for a in arms},
                              "what_if": {a: WHAT_IF[a] for a in arms if a in WHAT_IF}, "worker_env": env}
    with tempfile.TemporaryDirectory(dir=RUN_ROOT) as root:
        if not args.skip_cpu:
            size = SIZES["quick" if args.quick else "full"]
            result["cpu"] = part("cpu", size, "cpu", 2, arms, repeats, Path(root), env)
        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if gpus >= 2:
            result["machine"]["gpu"] = torch.cuda.get_device_name()
            result["gpu"] = part("gpu", SIZES["quick" if args.quick else "gpu"], "cuda", gpus, arms, repeats,
                                 Path(root), env)
        else:
            result["gpu"] = f"not run: {gpus} CUDA GPU(s) here; sharding needs 2 or more"
    result["machine"]["loadavg_end"] = os.getloadavg()
    result["total_seconds"] = time.perf_counter() - start
    out = args.out or RESULTS / ("sharding_quick.json" if args.quick else "sharding.json")
    write_json(out, result)
    for name in ("cpu", "gpu"):
        summary = result[name]["summary"] if isinstance(result.get(name), dict) else {}
        for key, ratio in summary.items():
            if key.endswith("_vs_ddp"):
                print(f"[{name}] {key}: " + ", ".join(f"{k} {v}" if isinstance(v, list) else f"{k} {v:.3f}"
                                                      for k, v in ratio.items()))
    print(f"total {result['total_seconds']:.0f} s")


if __name__ == "__main__":
    sys.exit(main())
