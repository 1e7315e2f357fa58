"""A loader's (train, test) pair -> the run's ``DataBundle``, the same way for every dataset:
class subset, seeded validation split carved from train, ``max_train``, stratified labels,
per-channel statistics (``channel_stats``: float64 over fixed chunks, the same for both
storages; a streamed split is read through its loader, ``data.stream``)."""

from __future__ import annotations

from typing import Any

import torch

from stagetrain.core.errors import StagetrainError
from stagetrain.data.bundle import DataBundle, Split
from stagetrain.data.stream import sequential_batches


def _select_classes(split: Split, classes: list[int]) -> Split:
    """Keep only the given classes, relabelled 0..k-1 in the order given."""
    lookup = torch.full((int(split.y.max()) + 1,), -1, dtype=torch.long)
    for new, old in enumerate(classes):
        if old < len(lookup):
            lookup[old] = new
    keep = torch.nonzero(lookup[split.y] >= 0).flatten()
    return Split(split.subset(keep).x, lookup[split.y[keep]])


def _stratified_subset(y: torch.Tensor, fraction: float, g: torch.Generator) -> torch.Tensor:
    """A seeded subset of indices with ``fraction`` of each class (at least one per class)."""
    picked = []
    for c in torch.unique(y):
        idx = torch.nonzero(y == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        picked.append(idx[: max(1, round(fraction * len(idx)))])
    return torch.sort(torch.cat(picked)).values


def finish_bundle(cfg: Any, seed: int, train: Split, test: Split, scale: float,
                  val: Split | None = None) -> DataBundle:
    """A loader's (train, test) -> the run's bundle: classes, validation split (carved from
    train unless the loader gives one), labels, statistics."""
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
        val = None if val is None else _select_classes(val, classes)
    num_classes = len(cfg.classes) if cfg.classes is not None else int(train.y.max()) + 1

    g = torch.Generator().manual_seed(seed)
    if val is None:
        order = torch.randperm(len(train), generator=g)
        n_val = max(num_classes, round(cfg.val_fraction * len(train)))
        val, train = train.subset(order[:n_val]), train.subset(order[n_val:])
    if cfg.max_train is not None and cfg.max_train < len(train):
        train = train.subset(torch.arange(cfg.max_train))
    if cfg.labeled_fraction < 1.0:
        labeled = _stratified_subset(train.y, cfg.labeled_fraction, g)
    else:
        labeled = torch.arange(len(train))

    mean, std = channel_stats(train, scale)
    return DataBundle(
        name, train, val, test, labeled, tuple(train.x.shape[1:]), num_classes, mean, std, scale
    )


STATS_CHUNK = 4096  # samples per chunk of the statistics pass: the same chunks for both storages


def channel_stats(train: Split, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and (unbiased) std per channel for images, per feature otherwise, of x / scale.

    Summed in float64 over fixed chunks, so a streamed split (read through its loader)
    gives bit for bit the statistics of the same data held in memory.
    """
    if train.streamed:
        chunks = sequential_batches(train.x, STATS_CHUNK)
    else:
        chunks = (train.x[i:i + STATS_CHUNK] for i in range(0, len(train), STATS_CHUNK))
    total = total_sq = None
    n = 0
    for chunk in chunks:
        xd = chunk.double() / scale
        dims = [0, *range(2, xd.ndim)]
        s, sq = xd.sum(dims), (xd * xd).sum(dims)
        total, total_sq = (s, sq) if total is None else (total + s, total_sq + sq)
        n += xd.numel() // s.numel()
    mean = total / n
    std = ((total_sq - n * mean * mean) / max(n - 1, 1)).clamp_min(0).sqrt()
    shape = (-1, 1, 1) if len(train.x.shape) == 4 else (-1,)
    return mean.float().view(shape), std.float().clamp_min(1e-3).view(shape)


def finish_loaded(cfg: Any, seed: int, loaded: tuple, storage: str, why: str) -> DataBundle:
    """A loader's (train, test, scale[, val, info]) finished into the run's bundle, with the
    storage decision, a streamed split's workers and augmentation, and the statistics in ``info``."""
    train, test, scale, *rest = loaded
    bundle = finish_bundle(cfg, seed, train, test, scale, rest[0] if rest else None)
    workers = int(getattr(cfg, "workers", 0))
    for split in (bundle.train, bundle.val, bundle.test):
        if split.streamed:
            split.x.workers = workers
    if bundle.train.streamed:
        bundle.train.x.augment = getattr(cfg, "augment", "none")
    bundle.info.update({"storage": storage, "storage_reason": why, **(rest[1] if len(rest) > 1 else {}),
                        "mean": bundle.mean.flatten().tolist(), "std": bundle.std.flatten().tolist()})
    if storage == "stream":
        bundle.info.update(workers=workers, augment=getattr(cfg, "augment", "none"))
    return bundle
