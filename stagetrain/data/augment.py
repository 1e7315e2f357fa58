"""Training augmentation presets (``dataset.augment``), built from torchvision transforms v2.

A preset transforms one raw sample (uint8 C x H x W) inside the streamed loader's
``__getitem__``, usually in a worker. Its randomness comes from a seed that is a pure
function of (epoch key, sample number) -- the epoch key itself of (seed, stage, epoch) --
set inside ``fork_rng``: the same sample in the same epoch gets the same augmentation
whichever worker reads it and whenever, so a resumed run reads exactly the batches of the
uninterrupted one, and the training process's own RNG is untouched.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch

AUGMENTS = ("none", "flip", "crop", "flip_crop")  # keep in step with schema.AUGMENTS


@functools.cache
def preset(name: str, size: tuple[int, int]) -> Callable[[torch.Tensor], torch.Tensor]:
    """The transform of preset ``name`` for images of ``size`` (H, W)."""
    from torchvision.transforms import v2

    pad = max(1, min(size) // 8)
    parts = {
        "flip": [v2.RandomHorizontalFlip()],
        "crop": [v2.RandomCrop(size, padding=pad)],
        "flip_crop": [v2.RandomCrop(size, padding=pad), v2.RandomHorizontalFlip()],
    }[name]
    return v2.Compose(parts)


def epoch_key(seed: int, stage: int, epoch: int) -> int:
    """The augmentation key of one epoch: a pure function of (seed, stage, epoch)."""
    return ((seed * 1_000_003 + stage) * 10_007 + epoch) * 7_919 + 1


def apply(name: str, x: torch.Tensor, key: int, sample: int) -> torch.Tensor:
    """Preset ``name`` on sample ``x`` (number ``sample``), randomness seeded by (key, sample)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed((key * 2_654_435_761 + sample) % (2**63 - 1))
        return preset(name, tuple(x.shape[-2:]))(x)
