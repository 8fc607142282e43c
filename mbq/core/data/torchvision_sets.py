"""CIFAR-10/100, SVHN and Fashion-MNIST through torchvision, held as uint8 tensors."""

from __future__ import annotations

import contextlib
import functools
import os
import sys

import numpy as np
import torch

from mbq.core.data._registry import register_dataset
from mbq.core.data.dataset import TensorImageDataset, resize_uint8
from mbq.core.errors import MbqError

# name -> (torchvision class, classes, mean, std, default augmentation)
_SPECS = {
    "cifar10": ("CIFAR10", 10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), "crop_flip"),
    "cifar100": ("CIFAR100", 100, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), "crop_flip"),
    "svhn": ("SVHN", 10, (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970), "crop"),
    "fashion-mnist": ("FashionMNIST", 10, (0.2860,), (0.3530,), "none"),
}


def _to_nchw(name: str, ds) -> tuple[torch.Tensor, torch.Tensor]:
    if name == "svhn":  # data is already [N, 3, H, W]; labels in .labels
        images, labels = np.asarray(ds.data), np.asarray(ds.labels)
    elif name == "fashion-mnist":  # [N, H, W] uint8 tensor
        images, labels = np.asarray(ds.data)[:, None], np.asarray(ds.targets)
    else:  # CIFAR: [N, H, W, 3] numpy
        images, labels = np.asarray(ds.data).transpose(0, 3, 1, 2), np.asarray(ds.targets)
    images = torch.from_numpy(np.ascontiguousarray(images, dtype=np.uint8))
    return images, torch.from_numpy(labels.astype(np.int64))


def _open(name: str, root: str, train: bool, download: bool):
    import torchvision.datasets as tvd  # heavy: only when such a dataset is asked for

    cls = getattr(tvd, _SPECS[name][0])
    kw = {"split": "train" if train else "test"} if name == "svhn" else {"train": train}
    try:
        # older torchvision prints download chatter; stdout belongs to --json results
        with contextlib.redirect_stdout(sys.stderr):
            return cls(root=root, download=download, **kw)
    except ImportError as exc:  # SVHN reads .mat files through scipy
        raise MbqError(f"dataset {name} needs {exc.name or 'an extra package'}: "
                       f"pip install {exc.name or 'scipy'}") from exc
    except Exception as exc:
        if download:
            # torchvision reports a failed fetch as URLError/OSError or "Error downloading"
            offline = isinstance(exc, OSError) or "download" in str(exc).lower()
            why = "no network access" if offline else "download failed"
            raise MbqError(f"could not download {name}: {why} ({exc}). "
                           f"Put the files under --data-dir yourself") from exc
        if isinstance(exc, RuntimeError):  # torchvision's "Dataset not found or corrupted"
            raise MbqError(f"dataset {name} not found under {root}: add --download to "
                           f"fetch it once (or put its files there)") from exc
        raise MbqError(f"cannot read dataset {name} under {root} ({exc}): "
                       f"delete the folder and fetch it again with --download") from exc


@functools.lru_cache(maxsize=8)
def _load(name: str, root: str, train: bool, download: bool):
    # cached per process: eval after train, or two loaders, decode the files once
    return _to_nchw(name, _open(name, root, train, download))


def _factory(name: str):
    tv_cls, classes, mean, std, augment = _SPECS[name]

    def build(*, data_dir=None, download=False, image_size=None):
        if data_dir is None:
            raise MbqError(f"dataset {name} needs --data-dir PATH "
                           f"(add --download to fetch it once)")
        root = os.path.abspath(os.path.expanduser(data_dir))
        if download:
            try:
                os.makedirs(root, exist_ok=True)
            except OSError as exc:
                raise MbqError(f"cannot create --data-dir {root} ({exc}): "
                               f"pick a writable folder") from exc
        out = []
        for train in (True, False):
            images, labels = _load(name, root, train, download)
            if image_size is not None:
                images = resize_uint8(images, image_size)
            out.append(TensorImageDataset(images, labels, name=name, num_classes=classes,
                                          mean=mean, std=std, augment=augment))
        return tuple(out)

    build.__name__ = name.replace("-", "_")
    build.__doc__ = f"{name} (torchvision {tv_cls}) as uint8 tensors."
    return build


for _name in _SPECS:
    register_dataset(_name)(_factory(_name))
