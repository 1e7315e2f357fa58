"""What every data source gives the engine: splits, a bundle, the epoch order.

A ``Split`` holds inputs and integer labels; a ``DataBundle`` holds a run's train /
validation / test splits, the labelled subset and the normalisation. ``finish_bundle``
turns a loader's (train, test) pair into a bundle the same way for every dataset: class
subset, seeded validation split carved from train, ``max_train``, stratified labels,
per-channel statistics.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from stagetrain.errors import StagetrainError


@dataclass
class Split:
    """Inputs (uint8 or float, N x C x H x W or N x D; int64 token ids N x T) and integer
    labels (N; N x T next tokens for language modelling)."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, index: torch.Tensor) -> Split:
        return Split(self.x[index], self.y[index])


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
    info: dict[str, Any] = field(default_factory=dict)  # what run.json records (text: tokenizer, labels)

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


def _select_classes(split: Split, classes: list[int]) -> Split:
    """Keep only the given classes, relabelled 0..k-1 in the order given."""
    lookup = torch.full((int(split.y.max()) + 1,), -1, dtype=torch.long)
    for new, old in enumerate(classes):
        if old < len(lookup):
            lookup[old] = new
    keep = lookup[split.y] >= 0
    return Split(split.x[keep], lookup[split.y[keep]])


def _stratified_subset(y: torch.Tensor, fraction: float, g: torch.Generator) -> torch.Tensor:
    """A seeded subset of indices with ``fraction`` of each class (at least one per class)."""
    picked = []
    for c in torch.unique(y):
        idx = torch.nonzero(y == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        picked.append(idx[: max(1, round(fraction * len(idx)))])
    return torch.sort(torch.cat(picked)).values


def finish_bundle(cfg: Any, seed: int, train: Split, test: Split, scale: float) -> DataBundle:
    """A loader's (train, test) -> the run's bundle: classes, validation split, labels, statistics."""
    name = cfg.name

    if cfg.classes is not None:
        classes = list(cfg.classes)
        present = set(torch.unique(train.y).tolist())
        missing = [c for c in classes if c not in present]
        if missing:
            raise StagetrainError(
                f"dataset.classes={classes} names classes {missing} that dataset={name} does not have "
                f"(it has {min(present)}..{max(present)})."
            )
        train, test = _select_classes(train, classes), _select_classes(test, classes)
    num_classes = len(cfg.classes) if cfg.classes is not None else int(train.y.max()) + 1

    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(train), generator=g)
    n_val = max(num_classes, round(cfg.val_fraction * len(train)))
    val, train = train.subset(order[:n_val]), train.subset(order[n_val:])
    if cfg.max_train is not None and cfg.max_train < len(train):
        train = train.subset(torch.arange(cfg.max_train))
    if cfg.labeled_fraction < 1.0:
        labeled = _stratified_subset(train.y, cfg.labeled_fraction, g)
    else:
        labeled = torch.arange(len(train))

    xf = train.x.float() / scale
    dims = [0] + list(range(2, xf.ndim))  # per channel for images, per feature otherwise
    if xf.ndim == 4:
        mean, std = xf.mean(dims, keepdim=True)[0], xf.std(dims, keepdim=True)[0]
    else:
        mean, std = xf.mean(0), xf.std(0)
    std = std.clamp_min(1e-3)
    return DataBundle(
        name, train, val, test, labeled, tuple(train.x.shape[1:]), num_classes, mean, std, scale
    )
