"""What every data source gives the engine: splits, a bundle, the epoch order.

A ``Split`` holds inputs and integer labels; a ``DataBundle`` holds a run's train /
validation / test splits, the labelled subset and the normalisation (``data.finish`` makes
one from a loader's (train, test) pair); ``read_batch`` is how any reader gives a batch.

The inputs of a split are either a tensor (``dataset.storage=memory``: a batch is an index
gather) or ``LazyInputs`` (``stream``: a map-style reader plus the sample numbers of the
split; ``x[idx]`` reads those samples, and the training loop reads batches through a
DataLoader, ``data.stream``). Labels always stay in memory.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import torch


def read_batch(reader: Any, rows: list[int]) -> torch.Tensor:
    """Samples ``rows`` of ``reader`` stacked: its own ``batch`` when it has one (one read for
    the whole batch, e.g. a memory map's fancy index), else sample by sample."""
    if hasattr(reader, "batch"):
        return reader.batch(rows)
    return torch.stack([reader[i] for i in rows]) if rows else torch.empty(0, *reader.sample_shape)


@dataclass
class LazyInputs:
    """A split's inputs read on demand: sample i is ``reader[index[i]]`` (a C x H x W or D
    tensor). ``take`` narrows the split without reading; ``x[idx]`` reads and stacks, on
    ``device``. ``augment`` (a preset name) and ``workers`` are for its DataLoaders."""

    reader: Any
    index: torch.Tensor
    device: torch.device | None = None
    augment: str = "none"
    workers: int = 0

    def __len__(self) -> int:
        return len(self.index)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.index), *self.reader.sample_shape)

    def take(self, idx: torch.Tensor | slice) -> LazyInputs:
        return replace(self, index=self.index[idx.cpu() if isinstance(idx, torch.Tensor) else idx])

    def __getitem__(self, idx: torch.Tensor | slice) -> torch.Tensor:
        x = read_batch(self.reader, self.take(idx).index.tolist())
        return x if self.device is None else x.to(self.device)

    def to(self, device: torch.device) -> LazyInputs:
        return replace(self, device=device)


@dataclass
class Split:
    """Inputs (uint8 or float, N x C x H x W or N x D, a tensor or ``LazyInputs``; int64 token
    ids N x T) and integer labels (N; N x T next tokens for language modelling)."""

    x: torch.Tensor | LazyInputs
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)

    @property
    def streamed(self) -> bool:
        return isinstance(self.x, LazyInputs)

    def subset(self, index: torch.Tensor) -> Split:
        return Split(self.x.take(index) if self.streamed else self.x[index], self.y[index])

    def rows(self, lo: int, hi: int) -> Split:
        """Samples lo..hi-1, without a copy (a view or a narrowed reader)."""
        return Split(self.x.take(slice(lo, hi)) if self.streamed else self.x[lo:hi], self.y[lo:hi])


@dataclass
class DataBundle:
    """Everything a run trains and evaluates on, already on the device."""

    name: str
    train: Split
    val: Split
    test: Split
    labeled: torch.Tensor  # indices into train whose labels supervised stages may use
    in_shape: tuple[int, ...]
    num_classes: int
    mean: torch.Tensor
    std: torch.Tensor
    scale: float  # raw value that maps to 1.0 (255 for uint8 images, 16 for digits)
    info: dict[str, Any] = field(default_factory=dict)  # for run.json: storage and why, tokenizer, class names...

    def normalize(self, x: torch.Tensor, mode: str = "standardize") -> torch.Tensor:
        """Raw batch -> float32 scaled to [0, 1], then (``standardize``) per channel. Token
        ids (int64) pass through unchanged: the model's token stem embeds them."""
        if x.dtype == torch.int64:
            return x
        x = x.float() / self.scale
        return (x - self.mean) / self.std if mode == "standardize" else x.clamp(0, 1)

    def to(self, device: torch.device) -> DataBundle:
        move = lambda s: Split(s.x.to(device), s.y.to(device))  # noqa: E731
        return DataBundle(
            self.name, move(self.train), move(self.val), move(self.test),
            self.labeled.to(device), self.in_shape, self.num_classes,
            self.mean.to(device), self.std.to(device), self.scale, self.info,
        )


def epoch_permutation(n: int, seed: int, stage: int, epoch: int, device: torch.device) -> torch.Tensor:
    """The data order of one epoch, a pure function of (seed, stage, epoch).

    Deriving the order instead of carrying a generator forward means a resumed run sees
    exactly the batches the interrupted one would have seen.
    """
    g = torch.Generator().manual_seed((seed * 1_000_003 + stage) * 10_007 + epoch)
    return torch.randperm(n, generator=g).to(device)
