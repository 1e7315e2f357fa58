"""Training augmentation presets (``dataset.augment``), from torchvision transforms v2.

A preset transforms one raw sample (uint8 C x H x W) inside the streamed loader's
``__getitem__``, usually in a worker. Its random parameters are drawn from a generator
seeded by (epoch key, sample number) -- the epoch key itself a function of (seed, stage,
epoch) -- and applied with torchvision's v2 functional ops: the same sample in the same
epoch gets the same augmentation whichever worker reads it and whenever, so a resumed run
reads exactly the batches of the uninterrupted one, and no global RNG is touched.

* ``flip``: horizontal flip with probability 1/2;
* ``crop``: zero-pad by 1/8 of the smaller side, then a random crop back to the size;
* ``flip_crop``: crop, then flip.
"""

from __future__ import annotations

import torch

AUGMENTS = ("none", "flip", "crop", "flip_crop")  # keep in step with schema.AUGMENTS


def epoch_key(seed: int, stage: int, epoch: int) -> int:
    """The augmentation key of one epoch: a pure function of (seed, stage, epoch)."""
    return ((seed * 1_000_003 + stage) * 10_007 + epoch) * 7_919 + 1


def apply(name: str, x: torch.Tensor, key: int, sample: int) -> torch.Tensor:
    """Preset ``name`` on sample ``x`` (number ``sample``), its randomness seeded by (key, sample)."""
    from torchvision.transforms.v2 import functional as F  # noqa: N812 - torchvision's name

    g = torch.Generator().manual_seed((key * 2_654_435_761 + sample) % (2**63 - 1))
    if name in ("crop", "flip_crop"):
        h, w = x.shape[-2:]
        pad = max(1, min(h, w) // 8)
        top, left = torch.randint(0, 2 * pad + 1, (2,), generator=g).tolist()
        x = F.crop(F.pad(x, [pad, pad, pad, pad]), top, left, h, w)
    if name in ("flip", "flip_crop") and bool(torch.rand((), generator=g) < 0.5):
        x = F.horizontal_flip(x)
    return x
