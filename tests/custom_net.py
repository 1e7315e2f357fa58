"""Small user networks for the ``model=custom`` tests, importable by dotted path
(``custom_net.SmallNet``): the tests folder is on ``sys.path`` under pytest."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SmallNet(nn.Module):
    """conv stem, two conv stages, global average pool + flatten, fc."""

    def __init__(self, num_classes: int = 10, width: int = 8, in_channels: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, width, 3, padding=1)
        self.bn = nn.BatchNorm2d(width)
        self.act = nn.ReLU()
        self.stage1 = nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU())
        self.stage2 = nn.Sequential(nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.ReLU())
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.bn(self.conv(x)))
        x = self.stage2(self.stage1(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def small_net(num_classes: int = 10, width: int = 8) -> SmallNet:
    """A builder function, as model.target may name one."""
    return SmallNet(num_classes=num_classes, width=width)


class ScaledNet(SmallNet):
    """Its forward scales between the stages: no cut by submodule names reproduces it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.bn(self.conv(x)))
        x = self.stage2(2.0 * self.stage1(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class ExtraNet(SmallNet):
    """Has a parameter no part holds."""

    def __init__(self, num_classes: int = 10):
        super().__init__(num_classes)
        self.unused = nn.Linear(3, 3)
