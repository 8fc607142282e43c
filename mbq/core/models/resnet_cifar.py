"""CIFAR-style ResNet-20 (He et al., "Deep Residual Learning", 2016, sec. 4.2)."""
from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from ._args import positive_number, scaled
from ._registry import register_model


class _BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            # option B: a real conv, so the quantizer sees (and can swap) it
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                          nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """conv3x3 stem -> 3 stages of ``blocks`` BasicBlocks -> global avgpool -> linear."""

    def __init__(self, blocks: int, num_classes: int, in_channels: int, width: float = 1):
        super().__init__()
        widths = [scaled(c, width) for c in (16, 32, 64)]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        layers, cin = [], widths[0]
        for i, cout in enumerate(widths):
            stage = []
            for b in range(blocks):
                stage.append(_BasicBlock(cin, cout, 2 if (i > 0 and b == 0) else 1))
                cin = cout
            layers.append(nn.Sequential(*stage))
        self.layer1, self.layer2, self.layer3 = layers
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.pool(x).flatten(1))


@register_model("resnet20")
def resnet20(num_classes: int, in_channels: int, image_size: int, width: float = 1) -> nn.Module:
    """ResNet-20 for 28/32 px inputs: 16/32/64 channels (times ``width``), 3x3 BasicBlocks.

    Shortcuts that change shape use a 1x1 conv + BN (the paper's option B)
    rather than option A's zero-padded identity, so every shortcut is an
    ordinary conv the quantizer can handle; this adds ~2.8k parameters
    (0.27M total at width 1, 10 classes).  No max-pool: the stem keeps the
    full resolution, and the global average pool makes any size >= 4 px work.
    """
    positive_number("resnet20: option width", width)
    return CifarResNet(3, num_classes, in_channels, width)
