"""A small CNN for smoke runs and tests: fast on CPU, still learns MNIST."""
from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from ..errors import MbqError
from ._registry import register_model


class SmallCNN(nn.Module):
    """conv-bn-relu-pool x2 -> fc -> fc; the first fc is sized from ``image_size``."""

    def __init__(self, num_classes: int, in_channels: int, image_size: int,
                 channels: tuple[int, int] = (16, 32), hidden: int = 128):
        super().__init__()
        c1, c2 = channels
        self.conv1 = nn.Conv2d(in_channels, c1, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c1)
        self.conv2 = nn.Conv2d(c1, c2, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c2)
        side = image_size // 2 // 2  # two 2x2 max-pools, floor like the pool itself
        self.fc1 = nn.Linear(c2 * side * side, hidden)
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 2)
        x = F.max_pool2d(F.relu(self.bn2(self.conv2(x))), 2)
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


@register_model("cnn", flat_features=True)
def cnn(num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    """Two conv blocks (16, 32 channels) and a 128-unit hidden layer; for quick runs.

    The input must be exactly ``image_size`` px square (the first fc depends on it).
    """
    if image_size < 4:
        raise MbqError(f"cnn needs images of at least 4 px (it pools twice), got image_size={image_size}")
    return SmallCNN(num_classes, in_channels, image_size)
