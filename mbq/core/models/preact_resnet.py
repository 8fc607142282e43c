"""Pre-activation ResNet-20 (He et al., "Identity Mappings", 2016) as widened
by Any-Precision DNN (Yu et al., AAAI 2021): 16/32/64 channels times ``expand``."""
from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from ._args import positive_number, scaled
from ._registry import register_model


class _PreActBlock(nn.Module):
    """BN-ReLU-conv twice; the shortcut (when shapes change) takes the pre-activated input."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.shortcut = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                          nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(x))
        skip = x if self.shortcut is None else self.shortcut(out)
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + skip


class PreActResNet(nn.Module):
    def __init__(self, blocks: int, num_classes: int, in_channels: int, expand: float):
        super().__init__()
        widths = [scaled(c, expand) for c in (16, 32, 64)]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        layers, cin = [], widths[0]
        for i, cout in enumerate(widths):
            stage = []
            for b in range(blocks):
                stage.append(_PreActBlock(cin, cout, 2 if (i > 0 and b == 0) else 1))
                cin = cout
            layers.append(nn.Sequential(*stage))
        self.layer1, self.layer2, self.layer3 = layers
        # pre-activation blocks end un-normalised: one last BN-ReLU before pooling
        self.bn = nn.BatchNorm2d(cin)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        x = self.conv1(x)
        x = self.layer3(self.layer2(self.layer1(x)))
        x = F.relu(self.bn(x))
        return self.fc(self.pool(x).flatten(1))


@register_model("preact_resnet20")
def preact_resnet20(num_classes: int, in_channels: int, image_size: int,
                    expand: float = 5) -> nn.Module:
    """Pre-activation ResNet-20, the Any-Precision DNN CIFAR backbone.

    ``expand=5`` (default) gives 80/160/320 channels as in that paper;
    ``expand=1`` is the thin 16/32/64 network.  Shape-changing shortcuts are
    1x1 conv + BN on the pre-activated input.
    """
    positive_number("preact_resnet20: option expand", expand)
    return PreActResNet(3, num_classes, in_channels, expand)
