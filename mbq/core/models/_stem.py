"""Replacement stems for ImageNet architectures fed small or non-RGB images."""
from __future__ import annotations

from torch import nn

# Below this an ImageNet stem (stride 2 conv + stride 2 pool) shrinks a
# 28-64 px image to a few pixels before the first stage; keep full resolution.
SMALL_INPUT = 96


def stem_conv(in_channels: int, out_channels: int, kernel_size: int, stride: int) -> nn.Conv2d:
    conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride,
                     padding=kernel_size // 2, bias=False)
    # same init torchvision gives its convs, so a swapped stem trains alike
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    return conv
