"""``BatchLoader``: shuffled, sharded, augmented, normalised batches without DataLoader.

Small datasets are one uint8 tensor, so a batch is a single index op; workers,
collation and per-sample transforms would only add overhead.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Iterator, NamedTuple

import torch

from mbq.core.data.augment import apply_augment
from mbq.core.data.dataset import AUGMENTS, ImageDataset
from mbq.core.errors import MbqError


class Batch(NamedTuple):
    x: torch.Tensor    # float32 [B, C, H, W], normalised, on the loader's device
    y: torch.Tensor    # int64 [B]
    idx: torch.Tensor  # int64 [B]: dataset indices (for per-sample scores)


def _seed(seed: int, epoch: int, stream: int) -> int:
    # one independent stream per (seed, epoch, purpose): shuffling and
    # augmentation never share random numbers, so either can change alone
    return ((int(seed) & 0xFFFFFFFF) << 31 | (int(epoch) & 0xFFFFFFF) << 3 | stream) & (2**63 - 1)


def _resolve_augment(augment, dataset: ImageDataset) -> str:
    if augment is True:
        return dataset.augment
    if augment is False or augment is None:
        return "none"
    if augment not in AUGMENTS:
        raise MbqError(f"unknown augmentation {augment!r}; use one of {', '.join(AUGMENTS)}")
    return augment


class BatchLoader:
    """Iterate ``Batch(x, y, idx)`` over ``dataset`` (or its ``indices`` subset).

    The order depends only on (seed, epoch): call ``set_epoch`` each epoch for a
    fresh shuffle that a resumed run reproduces. With ``world_size > 1`` each
    rank gets a disjoint, equal-length shard, padded by wrapping around.
    """

    def __init__(self, dataset: ImageDataset, batch_size: int, *, shuffle: bool,
                 augment: bool | str = False, device="cpu", seed: int = 0,
                 drop_last: bool = False, indices: torch.Tensor | None = None,
                 rank: int = 0, world_size: int = 1):
        if batch_size < 1:
            raise MbqError(f"batch size must be at least 1, got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"bad rank {rank} for world size {world_size}")
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.augment = _resolve_augment(augment, dataset)
        self.device = torch.device(device)
        self.seed = int(seed)
        self.drop_last = bool(drop_last)
        self.rank, self.world_size = int(rank), int(world_size)
        self.epoch = 0
        n = len(dataset)
        if indices is None:
            self.indices = torch.arange(n)
        else:
            self.indices = torch.as_tensor(indices, dtype=torch.int64).cpu().reshape(-1)
            if self.indices.numel() and (self.indices.min() < 0 or self.indices.max() >= n):
                raise ValueError(f"indices out of range for a dataset of {n} items")
        c = dataset.in_channels
        mean = torch.tensor(dataset.mean, dtype=torch.float32).expand(c) if len(dataset.mean) == 1 \
            else torch.tensor(dataset.mean, dtype=torch.float32)
        std = torch.tensor(dataset.std, dtype=torch.float32).expand(c) if len(dataset.std) == 1 \
            else torch.tensor(dataset.std, dtype=torch.float32)
        # (x/255 - mean)/std == x * scale + shift: one addcmul per batch
        self._scale = (1.0 / (std * 255.0)).view(1, c, 1, 1).to(self.device)
        self._shift = (-mean / std).view(1, c, 1, 1).to(self.device)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _shard_len(self) -> int:
        n = self.indices.numel()
        return -(-n // self.world_size)

    def __len__(self) -> int:
        m = self._shard_len()
        return m // self.batch_size if self.drop_last else -(-m // self.batch_size)

    def order(self) -> torch.Tensor:
        """This rank's dataset indices for the current epoch, in iteration order."""
        idx = self.indices
        n = idx.numel()
        if self.shuffle and n:
            g = torch.Generator().manual_seed(_seed(self.seed, self.epoch, 0))
            idx = idx[torch.randperm(n, generator=g)]
        if self.world_size > 1 and n:
            total = self._shard_len() * self.world_size
            if total > n:  # pad by wrapping, like DistributedSampler
                idx = idx.repeat(-(-total // n))[:total]
            idx = idx[self.rank::self.world_size]
        return idx

    def _aug_generator(self) -> torch.Generator | None:
        if self.augment == "none":
            return None
        g = torch.Generator(device=self.device)
        g.manual_seed(_seed(self.seed, self.epoch, 1))
        return g

    def _finish(self, x, y, idx, gen) -> Batch:
        dev = self.device
        if x.device != dev:
            x = x.to(dev, non_blocking=True)
        x = apply_augment(x, self.augment, gen)
        x = torch.addcmul(self._shift, x, self._scale)  # uint8 in, float32 out
        return Batch(x, y.to(dev, non_blocking=True), idx.to(dev, non_blocking=True))

    def __iter__(self) -> Iterator[Batch]:
        ds, bs = self.dataset, self.batch_size
        order = self.order().to(ds.device)
        nb = len(self)
        gen = self._aug_generator()
        if not ds.lazy:
            for i in range(nb):
                idx = order[i * bs:(i + 1) * bs]
                x, y = ds.get_batch(idx)
                yield self._finish(x, y, idx, gen)
            return
        # lazy datasets decode files: keep the next batch decoding while this one trains
        pin = self.device.type == "cuda"

        def fetch(i):
            idx = order[i * bs:(i + 1) * bs]
            x, y = ds.get_batch(idx)
            return (x.pin_memory() if pin else x), y, idx

        with ThreadPoolExecutor(max_workers=1) as pool:
            nxt = pool.submit(fetch, 0) if nb else None
            for i in range(nb):
                x, y, idx = nxt.result()
                nxt = pool.submit(fetch, i + 1) if i + 1 < nb else None
                yield self._finish(x, y, idx, gen)
