"""Dataset types: the ``ImageDataset`` base and the in-memory ``TensorImageDataset``."""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from mbq.core.errors import MbqError

AUGMENTS = ("none", "crop", "crop_flip")


class ImageDataset(ABC):
    """A labelled image split; images come out as uint8 [B, C, H, W] batches.

    ``labels`` always lives on the CPU (cheap to inspect, to balance classes, to
    score); ``get_batch`` answers on ``device`` (CPU for lazy datasets).
    """

    lazy = False  # True when get_batch decodes files (loader prefetches then)

    def __init__(self, *, name: str, num_classes: int, in_channels: int, image_size: int,
                 mean, std, augment: str, labels: torch.Tensor):
        if augment not in AUGMENTS:
            raise ValueError(f"augment must be one of {AUGMENTS}, got {augment!r}")
        self.name = name
        self.num_classes = int(num_classes)
        self.in_channels = int(in_channels)
        self.image_size = int(image_size)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.augment = augment
        self.labels = torch.as_tensor(labels, dtype=torch.int64).cpu()

    def __len__(self) -> int:
        return int(self.labels.numel())

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(name={self.name!r}, n={len(self)}, "
                f"shape=({self.in_channels}, {self.image_size}, {self.image_size}), "
                f"classes={self.num_classes})")

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def meta(self) -> dict:
        """What a checkpoint needs to rebuild inputs: name, shape and normalisation."""
        return {"name": self.name, "num_classes": self.num_classes,
                "in_channels": self.in_channels, "image_size": self.image_size,
                "mean": list(self.mean), "std": list(self.std), "augment": self.augment}

    def _meta_kwargs(self) -> dict:
        return {"name": self.name, "num_classes": self.num_classes,
                "in_channels": self.in_channels, "image_size": self.image_size,
                "mean": self.mean, "std": self.std, "augment": self.augment}

    @abstractmethod
    def get_batch(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 images [B, C, H, W] and int64 labels [B] for ``indices``."""

    @abstractmethod
    def subset(self, indices) -> "ImageDataset":
        """A new dataset of the given items (re-indexed 0..len-1), same metadata."""

    def to(self, device) -> "ImageDataset":
        return self

    def __getitem__(self, i: int):
        x, y = self.get_batch(torch.tensor([int(i)]))
        return x[0], int(y[0])


class TensorImageDataset(ImageDataset):
    """A whole split held as one uint8 tensor [N, C, H, W]; batching is indexing."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, *, name: str,
                 num_classes: int, mean, std, augment: str = "none"):
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError("images must be uint8 [N, C, H, W], "
                             f"got {images.dtype} {tuple(images.shape)}")
        if images.shape[2] != images.shape[3]:
            raise ValueError(f"images must be square, got {tuple(images.shape[2:])}")
        if images.shape[0] != len(labels):
            raise ValueError(f"{images.shape[0]} images but {len(labels)} labels")
        super().__init__(name=name, num_classes=num_classes, in_channels=images.shape[1],
                         image_size=images.shape[2], mean=mean, std=std, augment=augment,
                         labels=labels)
        self.images = images.contiguous()
        self._dev_labels = self.labels.to(images.device)

    @property
    def device(self) -> torch.device:
        return self.images.device

    def get_batch(self, indices):
        indices = torch.as_tensor(indices, dtype=torch.int64).to(self.images.device)
        return self.images[indices], self._dev_labels[indices]

    def subset(self, indices) -> "TensorImageDataset":
        indices = torch.as_tensor(indices, dtype=torch.int64)
        kw = self._meta_kwargs()
        del kw["in_channels"], kw["image_size"]
        return TensorImageDataset(self.images[indices.to(self.images.device)],
                                  self.labels[indices.cpu()], **kw)

    def to(self, device) -> "TensorImageDataset":
        """Move the images once (in place) so batches are cut where the model runs."""
        device = torch.device(device)
        if self.images.device != device:
            self.images = self.images.to(device)
            self._dev_labels = self.labels.to(device)
        return self


def resize_uint8(images: torch.Tensor, size: int) -> torch.Tensor:
    """Resize a uint8 [N, C, H, W] stack to size x size once, at load time."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    kw = dict(size=(size, size), mode="bilinear", align_corners=False,
              antialias=size < max(images.shape[-2:]))  # antialiasing matters only when shrinking
    try:
        # native uint8 kernel (CPU): no float copy of the whole set, ~2x faster
        return torch.nn.functional.interpolate(images, **kw)
    except RuntimeError:
        x = torch.nn.functional.interpolate(images.float(), **kw)
        return x.round_().clamp_(0, 255).to(torch.uint8)


def _generator(seed: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(int(seed))
    return g


def split_holdout(ds: ImageDataset, n_val: int, seed: int) -> tuple[ImageDataset, ImageDataset]:
    """Deterministically hold ``n_val`` items of a train split out: (train, val)."""
    n = len(ds)
    if not 0 < n_val < n:
        raise MbqError(f"held-out size must be between 1 and {n - 1} for {ds.name} "
                       f"({n} training images), got {n_val}")
    perm = torch.randperm(n, generator=_generator(seed))
    # sorted: keeps memory access sequential and the split independent of perm order
    val = perm[:n_val].sort().values
    train = perm[n_val:].sort().values
    return ds.subset(train), ds.subset(val)


def take_subset(ds: ImageDataset, n: int, seed: int) -> ImageDataset:
    """``n`` random items, spread across classes as evenly as the data allows."""
    if n < 1:
        raise MbqError(f"subset size must be at least 1, got {n}")
    if n >= len(ds):
        return ds
    labels = ds.labels
    perm = torch.randperm(len(ds), generator=_generator(seed))
    lab = labels[perm]
    # position of each item among the shuffled items of its class ...
    by_class = torch.argsort(lab, stable=True)
    counts = torch.bincount(lab, minlength=int(lab.max()) + 1)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.empty_like(lab)
    rank[by_class] = torch.arange(len(lab)) - starts[lab[by_class]]
    # ... then round-robin over classes: every class's first item (in shuffled order),
    # then every class's second, ...
    order = torch.argsort(rank * len(lab) + torch.arange(len(lab)))
    return ds.subset(perm[order[:n]].sort().values)
