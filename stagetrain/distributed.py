"""Data-parallel training under ``torchrun``: process group, rank-0 agreement, reductions.

``torchrun --nproc-per-node N $(which stagetrain) ...`` starts N copies of the same run.
Every rank composes the same config, loads the same data onto its device, builds the same
plan and model, and walks the plan in lockstep. In each step rank r trains on its slice of
the global batch (a slice of the same epoch permutation) and DDP averages the gradients,
so the global batch is ``train.batch_size`` as in one process. Decisions that end a stage
or the run come from all-reduced numbers (or from an all-reduced flag), so ranks never
diverge; only rank 0 writes the run directory.

Without torchrun (no ``WORLD_SIZE`` > 1 in the environment) every function here is a
no-op and a run is exactly the single-process one.

What is counted: ``flops`` (run.json, metrics.jsonl) is the global training cost of all
ranks together -- the measured per-sample cost of the stage times the samples of the
global batch -- so it equals the single-process count of the same run; gradient
communication is not counted. A feature cache is built by every rank (each needs the
whole stage's features) and counted once. ``seconds`` is rank 0's wall time.

Backend: ``gloo`` for CPU tensors and, when CUDA exists, ``nccl`` for CUDA tensors (one
process group, ``cpu:gloo,cuda:nccl``): gradients of a CUDA run go through NCCL, while
the small per-step and per-epoch agreements travel on the CPU through gloo and never make
the GPU wait.
"""

from __future__ import annotations

import atexit
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.distributed as dist

from stagetrain.core.errors import StagetrainError


def launched() -> bool:
    """True when torchrun (or another launcher setting WORLD_SIZE > 1) started this process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def active() -> bool:
    """True once this process has joined a process group of more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    """Rank 0: the only process that writes the run directory."""
    return rank() == 0


def init() -> bool:
    """Join torchrun's process group (env:// rendezvous), once; False when not launched."""
    if not launched():
        return False
    if not dist.is_initialized():
        backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
        atexit.register(_shutdown)
    return True


def join(batch_size: int) -> bool:
    """Under torchrun: join the process group and check that the global batch splits over
    the ranks; True on rank 0 (the only one that writes), whose log speaks for the run."""
    world = world_size() if init() else 1
    if world > 1:
        check_world(batch_size, world)
        if not is_main():  # other ranks add warnings and errors
            logging.getLogger("stagetrain").setLevel(logging.WARNING)
    return is_main()


def check_world(batch_size: int, world: int) -> None:
    """Under torchrun the global batch stays ``train.batch_size``: each rank takes 1/world of it."""
    if batch_size % world:
        raise StagetrainError(
            f"train.batch_size={batch_size} cannot be split over the {world} torchrun processes: the global "
            f"batch stays train.batch_size and each process takes batch_size / {world}. Use a "
            f"multiple of {world}, e.g. train.batch_size={max(world, batch_size // world * world)}.")


def _shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def leave(ok: bool) -> None:
    """At the end of a command: after a success every rank waits for the others, then leaves
    the process group (the atexit handler stays for a process that ends another way). A
    failed rank leaves at once: its peers' own collectives fail and end them."""
    try:
        if ok and active():
            dist.barrier()
    except RuntimeError:  # a peer failed and left: nothing to wait for
        pass
    _shutdown()


def agree(value: Any) -> Any:
    """Rank 0's ``value`` on every rank (e.g. the run directory name drawn from the clock)."""
    if not init():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    if active():
        dist.barrier()


def all_sum(values: list[Any]) -> list[float]:
    """Element-wise sum over ranks of a few numbers (Python floats or 0-d tensors), in float64."""
    t = torch.tensor([float(v) for v in values], dtype=torch.float64)
    if active():
        dist.all_reduce(t)
    return t.tolist()


def any_rank(*flags: bool) -> list[bool]:
    """For each flag: is it set on any rank? One small CPU all-reduce for all of them."""
    t = torch.tensor([int(bool(f)) for f in flags], dtype=torch.int32)
    if active():
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return [bool(v) for v in t.tolist()]


def shard(positions: torch.Tensor) -> torch.Tensor:
    """This rank's contiguous slice of a global batch (sizes differ by at most one)."""
    if not active():
        return positions
    return positions.tensor_split(world_size())[rank()]


def shard_range(n: int) -> tuple[int, int]:
    """This rank's contiguous [start, stop) of n items, for sharded evaluation."""
    if not active():
        return 0, n
    r, w = rank(), world_size()
    return n * r // w, n * (r + 1) // w


@contextmanager
def rank_rng(seed: int, device: torch.device) -> Iterator[None]:
    """Inside: the global RNGs seeded with ``seed``; on exit they are back where they were."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield
