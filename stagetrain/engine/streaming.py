"""The batches of a streamed training split, read ahead by a DataLoader.

The loop walks an epoch's batches exactly as for data in memory (a slice of the epoch
permutation, this rank's shard of it, the stage's sample numbers); for a streamed split it
hands the same slices, from the batch it resumes at, to the stage's ``EpochLoader`` up
front, and takes each batch's inputs from it in turn. So the order is a pure function of
(seed, stage, epoch) and the resume position, whatever the workers do.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from stagetrain import distributed
from stagetrain.data.augment import epoch_key
from stagetrain.engine.runtime import StageRuntime


def epoch_inputs(rt: StageRuntime, perm: torch.Tensor, start: int, batch_size: int, world: int,
                 seed: int, stage: int, epoch: int) -> Iterator[torch.Tensor] | None:
    """Raw inputs of batches ``start``.. of the epoch (None when the split is in memory, or
    the stage trains on cached features)."""
    if rt.loader is None or rt.cache is not None:
        return None
    rows, perm, indices = [], perm.cpu(), rt.indices.cpu()  # sample numbers live on the host
    for b in range(start, rt.steps_per_epoch):
        positions = perm[b * batch_size:(b + 1) * batch_size] if b < rt.steps_per_epoch - 1 else perm[b * batch_size:]
        if len(positions) < world:  # the loop skips such a batch
            continue
        mine = distributed.shard(positions) if world > 1 else positions
        rows.append(mine if rt.all_samples else indices[mine])
    return rt.loader.epoch(rows, epoch_key(seed, stage, epoch))
