"""Streamed splits: batches read through a torch DataLoader, in an order fixed in advance.

The in-memory path gathers a batch from a tensor; a streamed split (``LazyInputs``) holds a
map-style reader instead. Its DataLoader's sampler yields the batches the engine chose --
the epoch permutation's, from the batch a resumed run continues at -- one item per batch,
so workers, prefetching, pinned memory and persistent workers change only when a batch is
read, never which samples it holds or in which order. An item is (sample numbers,
augmentation key), read in one go when the reader has ``batch``; the key is a pure
function of (seed, stage, epoch), so a random augmentation is seeded per sample and epoch
(``augment.apply``), never by worker timing.

``storage_choice`` decides ``dataset.storage=auto`` from the metadata alone.
"""

from __future__ import annotations

import math
import os
import signal
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from stagetrain.core.errors import StagetrainError
from stagetrain.data.augment import apply
from stagetrain.data.bundle import LazyInputs, read_batch


class _Items(Dataset):
    """A whole batch per item: (sample numbers, augmentation key or None) -> stacked inputs,
    each sample augmented with ``preset`` when a key is given."""

    def __init__(self, reader: Any, preset: str):
        self.reader, self.preset = reader, preset

    def __len__(self) -> int:
        return len(self.reader)

    def __getitem__(self, item: tuple[list[int], int | None]) -> torch.Tensor:
        rows, key = item
        x = read_batch(self.reader, rows)
        if key is None or self.preset == "none":
            return x
        return torch.stack([apply(self.preset, x[j], key, i) for j, i in enumerate(rows)])


class _Batches:
    """The loader's sampler: the batches of the next pass, set before it (sample numbers, key)."""

    def __init__(self) -> None:
        self.batches: list[tuple[list[int], int | None]] = []

    def __iter__(self) -> Iterator[tuple[list[int], int | None]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def _loader(x: LazyInputs, sampler: _Batches, persistent: bool) -> DataLoader:
    """Its own generator: starting an epoch draws the workers' base seed from it, not from
    the global RNG, so streaming leaves the training RNG (init, dropout, noise) untouched."""
    workers = x.workers
    pin = x.device is not None and x.device.type == "cuda"
    if workers > 0:
        _worker_deaths_noticed_by_the_loader()
    return DataLoader(_Items(x.reader, x.augment), sampler=sampler, batch_size=None, num_workers=workers,
                      pin_memory=pin, persistent_workers=persistent and workers > 0,
                      prefetch_factor=2 if workers > 0 else None, generator=torch.Generator().manual_seed(0))


def _worker_deaths_noticed_by_the_loader() -> None:
    """Keep PyTorch from installing its SIGCHLD handler, which raises a worker's death
    wherever the main thread happens to be (mid-step: a traceback past every handler). The
    loader itself then notices the dead worker when it next waits for a batch (within
    5 s), inside ``_read``, which says so in one paragraph."""
    from torch.utils.data._utils import signal_handling

    signal_handling._SIGCHLD_handler_set = True


def _read(loader: DataLoader, device: torch.device | None) -> Iterator[torch.Tensor]:
    """The loader's batches on ``device``; a reader's StagetrainError raised in a worker
    comes back as the same one-paragraph error, without the worker's traceback, and a worker
    killed by a signal (the out-of-memory killer, kill -9) stops the run with one paragraph."""
    batches = iter(loader)
    try:
        for x in batches:
            yield x if device is None else x.to(device, non_blocking=True)
    except StagetrainError as e:
        text = str(e)
        if text.startswith("Caught StagetrainError"):
            raise StagetrainError(text.rsplit("StagetrainError: ", 1)[-1].strip()) from None
        raise
    except (RuntimeError, OSError, EOFError) as e:  # a dead worker's socket: ConnectionResetError
        died = worker_death(e, loader.num_workers, getattr(batches, "_workers", []))
        if died is None:
            raise
        raise died from None


def worker_death(e: BaseException, workers: int, processes: list[Any] = ()) -> StagetrainError | None:
    """The one-paragraph error when a DataLoader worker died: PyTorch's "DataLoader worker
    (pid N) exited unexpectedly" (or "is killed by signal"), or any error while one of
    ``processes`` (the loader's workers) has ended by a signal, e.g. the connection reset a
    batch in transit meets. None for any other error. The run stops there as after a
    failure: its last checkpoint is kept, and resume=auto continues from it."""
    text = str(e).strip()
    for w in processes:
        if hasattr(w, "join") and w.exitcode is None:
            w.join(timeout=0.2)  # a worker that is dying: its exit code in a moment
    killed = [f"pid {w.pid} killed by {signal.Signals(-w.exitcode).name}" for w in processes
              if isinstance(getattr(w, "exitcode", None), int) and w.exitcode < 0]
    if not killed and not text.startswith("DataLoader worker (pid"):
        return None
    cause = ", ".join(killed) or text.split(". ", 1)[0].rstrip(".")
    return StagetrainError(
        f"dataset.workers={workers}: a data-loading process died while reading the data ({cause}); the run "
        "stopped there. A worker killed by SIGKILL was most often ended by the out-of-memory killer: use "
        "fewer workers (dataset.workers=0 reads in this process) or give the job more memory. Continue the "
        "run with resume=auto and the same hydra.run.dir: from its last checkpoint (from the start if it had none).")


class EpochLoader:
    """The streamed training split of a stage: one DataLoader (workers kept between
    epochs), fed each epoch the batches it must read."""

    def __init__(self, x: LazyInputs):
        self.x, self.sampler = x, _Batches()
        self.loader = _loader(x, self.sampler, persistent=True)

    def epoch(self, rows: list[torch.Tensor], key: int) -> Iterator[torch.Tensor]:
        """Raw input batches for ``rows`` (each a tensor of sample numbers of the split),
        augmented with the epoch's ``key`` when the split augments."""
        aug = None if self.x.augment == "none" else key
        self.sampler.batches = [(self.x.index[r.cpu()].tolist(), aug) for r in rows]
        return _read(self.loader, self.x.device)


def sequential_batches(x: LazyInputs, size: int) -> Iterator[torch.Tensor]:
    """The split's inputs in order, ``size`` samples a batch, never augmented (evaluation,
    statistics, the feature cache)."""
    sampler = _Batches()
    index = x.index.tolist()
    sampler.batches = [(index[lo:lo + size], None) for lo in range(0, len(index), size)]
    return _read(_loader(x, sampler, persistent=False), x.device)


def materialize(x: LazyInputs) -> torch.Tensor:
    """All of the split's inputs as one tensor (a streamable source loaded into memory)."""
    parts = list(sequential_batches(x, 1024))
    return torch.cat(parts) if parts else torch.empty(0, *x.reader.sample_shape, dtype=torch.uint8)


def free_memory(device: torch.device | None) -> int:
    """Bytes free where the data would live: the GPU's memory, else the host's available RAM."""
    if device is not None and device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def storage_choice(cfg: Any, streamable: bool, nbytes: int, device: torch.device | None) -> tuple[str, str]:
    """(memory | stream, why) for ``dataset.storage``; ``auto`` compares the training
    inputs' size (from the metadata, nothing read) with ``dataset.memory_budget``."""
    asked = getattr(cfg, "storage", "memory")
    augment = getattr(cfg, "augment", "none")
    if asked != "memory" and not streamable:
        if asked == "stream":
            raise StagetrainError(f"dataset.storage=stream: dataset={cfg.name} has no streamed reader; it is "
                                  "read into memory. Use dataset.storage=memory or auto.")
        return "memory", f"dataset={cfg.name} is always read into memory"
    if asked != "auto":
        return asked, f"dataset.storage={asked}"
    if augment != "none":
        return "stream", f"dataset.augment={augment} runs per sample in the streamed loader"
    budget_cfg = float(getattr(cfg, "memory_budget", 0.5))
    free = free_memory(device)
    budget = budget_cfg * free if budget_cfg <= 1 else budget_cfg
    where = "GPU" if device is not None and device.type == "cuda" else "host"
    size = f"{nbytes / 2**20:.0f} MiB of training inputs"
    limit = (f"{budget / 2**20:.0f} MiB ({budget_cfg:g} of the {where}'s free memory)" if budget_cfg <= 1
             else f"{budget / 2**20:.0f} MiB")
    if nbytes <= budget:
        return "memory", f"auto: {size} fit in dataset.memory_budget={limit}"
    return "stream", f"auto: {size} exceed dataset.memory_budget={limit}"


def sample_bytes(shape: tuple[int, ...], itemsize: int = 1) -> int:
    return math.prod(shape) * itemsize
