"""scikit-learn's bundled 8x8 digits (1797 images, no network), split 80/20."""

from __future__ import annotations

import functools

import torch

from mbq.core.data._registry import register_dataset
from mbq.core.data.dataset import TensorImageDataset, resize_uint8
from mbq.core.errors import MbqError


@functools.lru_cache(maxsize=1)
def _load() -> tuple[torch.Tensor, torch.Tensor]:
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:
        raise MbqError("dataset digits needs scikit-learn: pip install 'mbq[digits]'") from exc
    d = load_digits()
    # pixel values are 0..16 counts; stretch to the 0..255 every other dataset uses
    images = torch.from_numpy(d.images).mul(255.0 / 16.0).round().clamp(0, 255)
    return images.to(torch.uint8).unsqueeze(1), torch.from_numpy(d.target).long()


@register_dataset("digits")
def digits(*, data_dir=None, download=False, image_size=None):
    images, labels = _load()
    if image_size is not None:
        images = resize_uint8(images, image_size)
    perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    n_train = int(round(0.8 * len(labels)))
    tr, te = perm[:n_train].sort().values, perm[n_train:].sort().values
    # normalisation from the (fixed) training split, so it is the same every run
    x = images[tr].float() / 255.0
    mean, std = (round(x.mean().item(), 4),), (round(x.std().item(), 4),)
    kw = dict(name="digits", num_classes=10, mean=mean, std=std, augment="none")
    return (TensorImageDataset(images[tr], labels[tr], **kw),
            TensorImageDataset(images[te], labels[te], **kw))
