"""torchvision MobileNetV2/V3, randomly initialised, with stems for small or non-RGB inputs."""
from __future__ import annotations

from torch import nn

from ._args import positive_number
from ._registry import register_model
from ._stem import SMALL_INPUT, stem_conv


def _adapt(model: nn.Module, in_channels: int, image_size: int) -> nn.Module:
    old = model.features[0][0]  # the stem Conv2dNormActivation's conv
    stride = 1 if image_size < SMALL_INPUT else old.stride[0]
    if in_channels != old.in_channels or stride != old.stride[0]:
        # a stride-1 stem leaves 28-64 px inputs at 2x2..4x4 after the last stage
        # instead of 1x1; item assignment keeps the conv first in registration order
        model.features[0][0] = stem_conv(in_channels, old.out_channels, old.kernel_size[0], stride)
    return model


@register_model("mobilenet_v2")
def mobilenet_v2(num_classes: int, in_channels: int, image_size: int,
                 width_mult: float = 1.0) -> nn.Module:
    """torchvision MobileNetV2 (``weights=None``); stride-1 stem below 96 px."""
    from torchvision.models import mobilenet_v2 as tv

    positive_number("mobilenet_v2: option width_mult", width_mult)
    model = tv(weights=None, num_classes=num_classes, width_mult=float(width_mult))
    return _adapt(model, in_channels, image_size)


@register_model("mobilenet_v3_small")
def mobilenet_v3_small(num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    """torchvision MobileNetV3-Small (``weights=None``); stride-1 stem below 96 px."""
    from torchvision.models import mobilenet_v3_small as tv

    return _adapt(tv(weights=None, num_classes=num_classes), in_channels, image_size)


@register_model("mobilenet_v3_large")
def mobilenet_v3_large(num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    """torchvision MobileNetV3-Large (``weights=None``); stride-1 stem below 96 px."""
    from torchvision.models import mobilenet_v3_large as tv

    return _adapt(tv(weights=None, num_classes=num_classes), in_channels, image_size)
