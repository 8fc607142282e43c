"""torchvision ResNet-18/50, randomly initialised, with stems for small or non-RGB inputs."""
from __future__ import annotations

from torch import nn

from ._registry import register_model
from ._stem import SMALL_INPUT, stem_conv


def _adapt(model: nn.Module, in_channels: int, image_size: int) -> nn.Module:
    # assigning an existing attribute keeps its registration slot, so conv1
    # stays the first Conv2d and fc the last Linear
    if image_size < SMALL_INPUT:
        model.conv1 = stem_conv(in_channels, model.conv1.out_channels, 3, 1)
        model.maxpool = nn.Identity()
    elif in_channels != 3:
        model.conv1 = stem_conv(in_channels, model.conv1.out_channels, 7, 2)
    return model


@register_model("resnet18")
def resnet18(num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    """torchvision ResNet-18 (``weights=None``).

    Below 96 px the 7x7/2 stem becomes a 3x3/1 conv and the max-pool is
    dropped (CIFAR-style), so a 32 px image reaches the last stage at 4x4.
    """
    from torchvision.models import resnet18 as tv_resnet18

    return _adapt(tv_resnet18(weights=None, num_classes=num_classes), in_channels, image_size)


@register_model("resnet50")
def resnet50(num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    """torchvision ResNet-50 (``weights=None``); small-input stem as for resnet18."""
    from torchvision.models import resnet50 as tv_resnet50

    return _adapt(tv_resnet50(weights=None, num_classes=num_classes), in_channels, image_size)
