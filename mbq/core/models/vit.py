"""A tiny ViT (torchvision VisionTransformer) sized for 28-64 px images."""
from __future__ import annotations

import math

from torch import nn

from ..errors import MbqError
from ._args import positive_int
from ._registry import register_model

_HIDDEN, _HEADS, _MLP = 192, 3, 768  # ViT-Ti widths (Touvron et al., DeiT)


def _patch_size(image_size: int, patch_size: int | None) -> int:
    if patch_size is None:
        # 4 px patches give 49-256 tokens at 28-64 px; 7 covers sizes like 21 or 35
        patch_size = 4 if image_size % 4 == 0 else 7 if image_size % 7 == 0 else None
        if patch_size is None:
            raise MbqError(f"vit_tiny needs image_size divisible by 4 or 7, got {image_size}; "
                           "resize the images or pass patch_size")
    positive_int("vit_tiny: option patch_size", patch_size)
    if image_size % patch_size:
        raise MbqError(f"vit_tiny: image_size {image_size} is not a multiple of patch_size {patch_size}")
    return patch_size


def _patch_embed(in_channels: int, patch: int) -> nn.Conv2d:
    conv = nn.Conv2d(in_channels, _HIDDEN, kernel_size=patch, stride=patch)
    # torchvision's own patch-embedding init (LeCun-normal, zero bias)
    nn.init.trunc_normal_(conv.weight, std=math.sqrt(1 / (in_channels * patch * patch)))
    nn.init.zeros_(conv.bias)
    return conv


@register_model("vit_tiny", transformer=True)
def vit_tiny(num_classes: int, in_channels: int, image_size: int, depth: int = 6,
             patch_size: int | None = None) -> nn.Module:
    """ViT with hidden 192, 3 heads, MLP 768 and ``depth`` blocks (6: CPU-friendly).

    ``patch_size`` defaults to 4 when ``image_size`` is a multiple of 4, else 7.
    Inputs must be exactly ``image_size`` px square (fixed position embedding).

    Quantization note: torchvision's ``nn.MultiheadAttention`` applies its
    ``in_proj_weight`` and ``out_proj`` weights functionally, so swapping
    modules quantizes only the patch embedding (``conv_proj``), the MLP
    linears and the head; attention projections stay float.  ``out_proj`` is
    a ``NonDynamicallyQuantizableLinear`` (an ``nn.Linear`` subclass) whose
    ``forward`` never runs, so a swapper must match ``type(m) is nn.Linear``.
    """
    from torchvision.models.vision_transformer import VisionTransformer

    positive_int("vit_tiny: option depth", depth)
    patch = _patch_size(image_size, patch_size)
    model = VisionTransformer(image_size=image_size, patch_size=patch, num_layers=depth,
                              num_heads=_HEADS, hidden_dim=_HIDDEN, mlp_dim=_MLP,
                              num_classes=num_classes)
    if in_channels != 3:
        model.conv_proj = _patch_embed(in_channels, patch)  # same slot: still the first Conv2d
    return model
