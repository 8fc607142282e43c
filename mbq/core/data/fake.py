"""``fake``: seeded random images for shape-only smoke runs (never report accuracy)."""

from __future__ import annotations

import torch

from mbq.core.data._registry import register_dataset
from mbq.core.data.dataset import TensorImageDataset

_CLASSES, _CHANNELS = 10, 3
_N_TRAIN, _N_TEST = 512, 128


def _make(n: int, size: int, seed: int, templates: torch.Tensor):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, _CLASSES, (n,), generator=g)
    noise = torch.randint(0, 128, (n, _CHANNELS, size, size), generator=g, dtype=torch.uint8)
    # noise plus a fixed per-class pattern: learnable, so smoke runs can see loss fall
    return noise + templates[labels], labels


@register_dataset("fake")
def fake(*, data_dir=None, download=False, image_size=None):
    size = image_size or 32
    g = torch.Generator().manual_seed(1234)
    templates = torch.randint(0, 128, (_CLASSES, _CHANNELS, size, size), generator=g,
                              dtype=torch.uint8)
    kw = dict(name="fake", num_classes=_CLASSES, mean=(0.5,) * _CHANNELS,
              std=(0.2,) * _CHANNELS, augment="crop_flip")
    return (TensorImageDataset(*_make(_N_TRAIN, size, 1, templates), **kw),
            TensorImageDataset(*_make(_N_TEST, size, 2, templates), **kw))
