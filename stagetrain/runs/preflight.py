"""Size and memory preflight: refuse, with the numbers, what would not fit before allocating it.

An architecture spec (from the config, or read from a checkpoint / safetensors file) is
first checked as data and built on PyTorch's ``meta`` device (``specfile.check_spec``, which
allocates nothing) to count its parameters exactly. The
estimate of what a run needs (``estimate_bytes``: weights, gradients and two optimizer
moments, activations of one batch for forward and backward, the dataset) is compared with
the memory available (host: MemAvailable and the cgroup limit; CUDA: free device memory).
Per rank: under torchrun with ``device.shard=fsdp`` parameters, gradients and Adam state are
divided by ``WORLD_SIZE`` (activations and data are not; the whole model is gathered on
every rank to evaluate), and the ``LOCAL_WORLD_SIZE`` ranks of one host share its memory.
Estimates are deliberately rough (within a factor of about two); what they catch is the
run that would need a hundred times what there is.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

from stagetrain.core.errors import StagetrainError
from stagetrain.core.spec import ModelSpec, as_spec
from stagetrain.nn.specfile import check_spec

BYTES_PER_PARAM = 16  # fp32 weight + gradient + Adam's two moments


def activation_elements(spec: ModelSpec | dict[str, Any]) -> int:
    """Output elements per sample summed over the parts (what one sample keeps for backward)."""
    arch = as_spec(spec)
    total = math.prod(arch.in_shape)
    for block in arch.blocks:
        shape = block.out_shape
        if isinstance(shape, list) and all(isinstance(d, int) for d in shape):
            total += math.prod(shape)
    return total


def available_bytes(device: Any = None) -> tuple[int | None, str]:
    """(bytes available, where) on ``device``: free CUDA memory, else host memory (the
    smaller of MemAvailable and the cgroup's limit); None when unknown."""
    if device is not None and getattr(device, "type", "cpu") == "cuda":
        import torch

        free, _ = torch.cuda.mem_get_info(device)
        return int(free), f"free memory of {device}"
    found = []
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    found.append(int(line.split()[1]) * 1024)
    except OSError:
        pass
    try:
        with open("/sys/fs/cgroup/memory.max") as f:
            text = f.read().strip()
        if text.isdigit():
            found.append(int(text))
    except OSError:
        pass
    return (min(found), "available host memory") if found else (None, "")


def _gb(n: float) -> str:
    return f"{n / 1024**3:.3g} GB"


def _env_count(name: str) -> int:
    value = os.environ.get(name, "1")
    return int(value) if value.isdigit() and int(value) > 0 else 1


def shard_count(device_cfg: Any) -> int:
    """Ranks that split parameters, gradients and optimizer state: torchrun's ``WORLD_SIZE``
    with ``device.shard=fsdp``; 1 otherwise (DDP: every rank holds the whole model)."""
    return _env_count("WORLD_SIZE") if getattr(device_cfg, "shard", "none") == "fsdp" else 1


@dataclass(frozen=True)
class Memory:
    """What one rank needs, in bytes. Parameters, gradients and Adam's two moments are fp32
    (4 bytes an element); under FSDP each rank holds 1/shards of every parameter (dim 0
    padded to a multiple of the shard count, as ``fully_shard`` does), plus the whole model
    gathered on every rank for each evaluation and at stage ends (``engine/sharding.gathered``:
    a plain copy filled one parameter at a time, 4 bytes a parameter plus the largest parameter
    whole: ``gathered``; a grow plan with ``strategy.optimizer_state=map`` also gathers Adam's
    moments at its stage ends, 8 bytes a parameter more, not counted here). Activations and the
    in-memory dataset are not divided; ``local_ranks`` processes share this host's memory."""

    params: int
    shards: int
    weights: int
    gradients: int
    optimizer: int
    gathered: int
    activations: int
    data: int
    batch: int = 1
    local_ranks: int = 1

    @property
    def state(self) -> int:
        return self.weights + self.gradients + self.optimizer

    @property
    def device(self) -> int:
        return self.state + self.gathered + self.activations


def memory_of(model: Any, spec: dict[str, Any], batch_size: int, data: int, shards: int = 1) -> Memory:
    """Per-rank bytes of ``model`` (built for ``spec``, e.g. on the meta device) trained with
    Adam on batches of ``batch_size`` over ``shards`` ranks."""
    def local(p: Any) -> int:  # this rank's elements of p: the padded dim-0 slice
        return p.numel() if p.dim() == 0 or shards == 1 else -(-p.shape[0] // shards) * (p.numel() // p.shape[0])

    params = list(model.parameters()) if model is not None else []  # None: a module built only for real
    elements = sum(local(p) for p in params)
    act = activation_elements(spec) * max(1, batch_size) * 4 * 3  # forward, its gradient, a temporary
    total = sum(p.numel() for p in params)
    largest = max((p.numel() for p in params), default=0)
    return Memory(params=total, shards=shards, weights=4 * elements, gradients=4 * elements,
                  optimizer=8 * elements, gathered=4 * (total + largest) if shards > 1 else 0,
                  activations=act, data=data, batch=max(1, batch_size), local_ranks=_env_count("LOCAL_WORLD_SIZE"))


def describe(mem: Memory) -> str:
    """'1.2 GB per rank: weights ..., activations ..., data ...' (the dry run's and the refusal's numbers)."""
    split = (f" ({mem.params:,} parameters sharded over {mem.shards} ranks, device.shard=fsdp; "
             f"{_gb(mem.gathered)} for the whole model gathered to evaluate)") if mem.shards > 1 else \
        f" ({mem.params:,} parameters)"
    return (f"{_gb(mem.device + mem.data)} per rank: {_gb(mem.state)} of weights, gradients and Adam state"
            f"{split}, activations of a batch of {mem.batch}: {_gb(mem.activations)}, data {_gb(mem.data)}")


def check_memory(mem: Memory, device: Any, what: str) -> None:
    """Refuse a run whose estimated need per rank exceeds the memory available, with the numbers
    (per rank, all ranks on this host together, available)."""
    cuda = getattr(device, "type", "cpu") == "cuda"
    per_rank_host = mem.data + (0 if cuda else mem.device)
    checks = [(per_rank_host, mem.local_ranks, available_bytes(None))]
    if cuda:
        checks.append((mem.device + mem.data, 1, available_bytes(device)))
    per = " per rank" if _env_count("WORLD_SIZE") > 1 else ""
    for need, ranks, (have, where) in checks:
        if have is not None and need * ranks > have:
            together = f"; the {ranks} ranks on this host need {_gb(need * ranks)} together" if ranks > 1 else ""
            shard = "" if mem.shards > 1 else " or device.shard=fsdp under torchrun (parameters, gradients and " \
                "Adam state split over the ranks)"
            raise StagetrainError(
                f"{what} would need about {_gb(need)}{per}{together}, but the {where} is {_gb(have)}. "
                f"Estimate: {describe(mem)}. Use smaller widths, a "
                f"smaller batch or dataset, more ranks{shard}, or a machine with more memory.")


def data_bytes(shape: tuple[int, ...], samples: int, itemsize: int) -> int:
    return int(math.prod(shape)) * int(samples) * int(itemsize)


def check_run(settings: Any, device: Any, run_specs: Any) -> None:
    """The preflight of a configured run: the architectures it starts and ends with
    (``run_specs(settings, shape, classes)``, the run layer's) built on the meta device, and
    the memory the run needs against what there is."""
    from stagetrain.datasets import dataset_meta, itemsize, samples_held

    shape, classes, n_train, _ = dataset_meta(settings.dataset)
    specs = run_specs(settings, shape, classes)
    ds = settings.dataset
    samples = samples_held(ds, n_train)
    data = data_bytes(shape, samples, itemsize(ds))
    have, where = available_bytes(None)
    if have is not None and data > have:
        raise StagetrainError(
            f"dataset={ds.name} would need about {_gb(data)} ({samples:,} samples of shape {list(shape)}) but the "
            f"{where} is {_gb(have)}. Use a smaller dataset.shape or fewer samples (dataset.n_train, "
            "dataset.n_test, dataset.max_train).")
    hint = "Use smaller sizes (model widths, channels, layers)."
    counted = [(check_spec(spec, f"the config (model={settings.model.name})", hint, 2**62), spec)
               for spec in specs]
    params, spec = max(counted, key=lambda c: c[0])
    batch = min(int(settings.train.batch_size), max(1, n_train))
    shards = shard_count(settings.device)
    mem = meta_memory(spec, batch, data, shards) if params else memory_of(None, spec, batch, data, shards)
    check_memory(mem, device,
                 f"This run (model={settings.model.name}, dataset={ds.name})")


def meta_memory(spec: dict[str, Any], batch_size: int, data: int, shards: int) -> Memory:
    """``memory_of`` a spec built on the meta device (allocates nothing)."""
    import torch

    from stagetrain.models import StagedModel

    with torch.device("meta"):
        return memory_of(StagedModel(spec), spec, batch_size, data, shards)
