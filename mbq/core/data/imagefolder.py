"""``imagefolder``: ``DATA_DIR/{train,val}/CLASS/*.jpg`` decoded lazily per batch."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from mbq.core.data._registry import register_dataset
from mbq.core.data.dataset import ImageDataset
from mbq.core.errors import MbqError

_EXTS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
_POOL: ThreadPoolExecutor | None = None


def _pool() -> ThreadPoolExecutor:
    # PIL releases the GIL while decoding, so threads scale without worker processes
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1),
                                   thread_name_prefix="mbq-decode")
    return _POOL


def _decode(path: str, size: int) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as img:
        img.draft("RGB", (size, size))  # JPEG: decode at a reduced scale when it can
        img = img.convert("RGB")
        w, h = img.size
        s = size / min(w, h)  # shorter side -> size, then center crop
        nw, nh = max(size, round(w * s)), max(size, round(h * s))
        img = img.resize((nw, nh), Image.BILINEAR)
        left, top = (nw - size) // 2, (nh - size) // 2
        img = img.crop((left, top, left + size, top + size))
        return np.asarray(img, dtype=np.uint8)


def _scan(folder: str, classes: list[str]) -> tuple[list[str], list[int]]:
    paths, labels = [], []
    for ci, cls in enumerate(classes):
        cdir = os.path.join(folder, cls)
        if not os.path.isdir(cdir):
            continue
        for root, _, files in sorted(os.walk(cdir, followlinks=True)):
            for f in sorted(files):
                if f.lower().endswith(_EXTS):
                    paths.append(os.path.join(root, f))
                    labels.append(ci)
    return paths, labels


class ImageFolderDataset(ImageDataset):
    """Files listed up front; pixels decoded, resized and center-cropped in ``get_batch``."""

    lazy = True

    def __init__(self, paths: list[str], labels, classes: list[str], *, image_size: int,
                 name: str = "imagefolder", mean=IMAGENET_MEAN, std=IMAGENET_STD,
                 augment: str = "crop_flip"):
        super().__init__(name=name, num_classes=len(classes), in_channels=3,
                         image_size=image_size, mean=mean, std=std, augment=augment,
                         labels=torch.as_tensor(labels, dtype=torch.int64))
        self.paths = list(paths)
        self.classes = list(classes)

    def get_batch(self, indices):
        idx = torch.as_tensor(indices, dtype=torch.int64).cpu()
        size = self.image_size
        out = np.empty((idx.numel(), 3, size, size), dtype=np.uint8)
        arrays = _pool().map(lambda i: _decode(self.paths[i], size), idx.tolist())
        for k, a in enumerate(arrays):
            out[k] = a.transpose(2, 0, 1)
        return torch.from_numpy(out), self.labels[idx]

    def subset(self, indices) -> "ImageFolderDataset":
        idx = torch.as_tensor(indices, dtype=torch.int64).cpu()
        kw = self._meta_kwargs()
        for k in ("num_classes", "in_channels"):
            del kw[k]
        return ImageFolderDataset([self.paths[i] for i in idx.tolist()], self.labels[idx],
                                  self.classes, **kw)


@register_dataset("imagefolder")
def imagefolder(*, data_dir=None, download=False, image_size=None):
    if data_dir is None:
        raise MbqError("dataset imagefolder needs --data-dir PATH holding train/ and val/ "
                       "class folders")
    root = os.path.abspath(os.path.expanduser(data_dir))
    if not os.path.isdir(root):
        raise MbqError(f"--data-dir {root} does not exist: point it at a folder with "
                       "train/ and val/ class folders")
    splits = {s: os.path.join(root, s) for s in ("train", "val")}
    for s, d in splits.items():
        if not os.path.isdir(d):
            raise MbqError(f"{root} has no {s}/ folder: imagefolder needs train/ and val/, "
                           f"each with one subfolder per class")
    classes = sorted(e.name for e in os.scandir(splits["train"]) if e.is_dir())
    if not classes:
        raise MbqError(f"{splits['train']} has no class subfolders: put each class's "
                       "images in train/CLASS_NAME/")
    extra = sorted(e.name for e in os.scandir(splits["val"])
                   if e.is_dir() and e.name not in classes)
    if extra:
        raise MbqError(f"val/ has classes missing from train/ ({', '.join(extra[:5])}): "
                       "val/ must use the train/ class folder names")
    size = image_size or 64
    out = []
    for s, d in splits.items():
        paths, labels = _scan(d, classes)
        if not paths:
            raise MbqError(f"no images found under {d}: expected {s}/CLASS/*.jpg|png "
                           f"({', '.join(_EXTS[:3])}, ...)")
        out.append(ImageFolderDataset(paths, labels, classes, image_size=size))
    return tuple(out)
