"""N-way K-shot episodes drawn from a class subset of a labelled dataset."""
from __future__ import annotations

import hashlib
from typing import NamedTuple

import torch

from ..data import BatchLoader
from ..errors import MbqError


class Episode(NamedTuple):
    """Dataset indices and episode labels (0..ways-1), support grouped by class."""

    support: torch.Tensor   # [ways * shots]
    support_y: torch.Tensor
    query: torch.Tensor     # [ways * queries]
    query_y: torch.Tensor


class EpisodeData(NamedTuple):
    xs: torch.Tensor  # normalised support images
    ys: torch.Tensor
    xq: torch.Tensor
    yq: torch.Tensor
    ways: int


def stream_seed(*parts) -> int:
    """A stable 63-bit seed from (seed, epoch, purpose, ...): independent streams per purpose."""
    h = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(h[:8], "little") & (2**63 - 1)


def generator(*parts) -> torch.Generator:
    return torch.Generator().manual_seed(stream_seed(*parts))


class EpisodeSampler:
    """Draws episodes of ``ways`` classes from ``classes``, ``shots`` + ``queries`` images each.

    ``what`` names the split in error messages (``meta-train`` / ``meta-test``).
    """

    def __init__(self, labels: torch.Tensor, classes: list[int], ways: int, shots: int,
                 queries: int, what: str = "meta-test"):
        labels = torch.as_tensor(labels).cpu()
        self.classes = list(classes)
        self.ways, self.shots, self.queries = int(ways), int(shots), int(queries)
        if self.ways > len(self.classes):
            raise MbqError(f"--ways {ways} is larger than the {len(self.classes)} {what} classes "
                           f"available ({', '.join(map(str, self.classes))}); lower --ways")
        self.by_class = [torch.nonzero(labels == c).flatten() for c in self.classes]
        counts = [len(ix) for ix in self.by_class]
        need = self.shots + self.queries
        smallest = min(range(len(counts)), key=counts.__getitem__)
        if counts[smallest] < need:
            raise MbqError(f"--shots {shots} + --queries {queries} = {need} is more than the smallest "
                           f"{what} class has ({counts[smallest]} images of class "
                           f"{self.classes[smallest]}); lower them or use more data")

    @staticmethod
    def max_queries(labels: torch.Tensor, classes: list[int], shots: int) -> int:
        """The most queries per class every class in ``classes`` can give after ``shots``."""
        labels = torch.as_tensor(labels).cpu()
        return min(int((labels == c).sum()) for c in classes) - shots

    def sample(self, g: torch.Generator) -> Episode:
        pick = torch.randperm(len(self.classes), generator=g)[: self.ways]
        sup, qry = [], []
        for ix in pick.tolist():
            pool = self.by_class[ix]
            take = pool[torch.randperm(len(pool), generator=g)[: self.shots + self.queries]]
            sup.append(take[: self.shots])
            qry.append(take[self.shots:])
        ways = torch.arange(self.ways)
        return Episode(torch.cat(sup), ways.repeat_interleave(self.shots),
                       torch.cat(qry), ways.repeat_interleave(self.queries))


def load_episode(dataset, ep: Episode, device) -> EpisodeData:
    """The episode's images, normalised like every other mbq batch (no augmentation)."""
    idx = torch.cat([ep.support, ep.query])
    loader = BatchLoader(dataset, len(idx), shuffle=False, augment=False, device=device, indices=idx)
    x = next(iter(loader)).x
    n = len(ep.support)
    dev = x.device
    return EpisodeData(x[:n], ep.support_y.to(dev), x[n:], ep.query_y.to(dev), int(ep.support_y.max()) + 1)
