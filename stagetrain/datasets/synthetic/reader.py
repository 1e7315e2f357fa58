"""``dataset=synthetic``: Gaussian class prototypes plus noise, drawn from the run's seed."""

from __future__ import annotations

from typing import Any

import torch

from stagetrain.data.bundle import Split


def load(cfg: Any, seed: int) -> tuple[Split, Split, float]:
    """Gaussian class prototypes plus isotropic noise; a smooth prototype makes images."""
    g = torch.Generator().manual_seed(1_000_003 + seed)
    shape = tuple(cfg.shape)
    protos = torch.randn(cfg.num_classes, *shape, generator=g)
    if len(shape) == 3:  # smooth the prototypes so neighbouring pixels correlate, like images
        protos = torch.nn.functional.avg_pool2d(protos, 3, stride=1, padding=1)
        protos = protos / protos.flatten(1).std(1).view(-1, 1, 1, 1)

    def draw(n: int) -> Split:
        y = torch.randint(cfg.num_classes, (n,), generator=g)
        x = protos[y] + cfg.noise * torch.randn(n, *shape, generator=g)
        return Split(x, y)

    return draw(cfg.n_train), draw(cfg.n_test), 1.0
