"""The per-bit coreset state of one training run.

Holds each child's scores, decides when to (re)score, draws each child's
subset for an epoch and round-trips through ``state_dict`` so ``--resume``
continues with the same scores and the same draws.
"""
from __future__ import annotations

import torch

from .forgetting import ForgettingTracker
from .io import CoresetFile
from .sampling import UNIFORM_MIX, draw_subset, overlap, subset_size


class BitwiseCoreset:
    """Per-bit subsets of an ``n``-sample training set.

    Epochs before ``start`` are the warm-up: on the full data
    (``warmup_data="full"``) or, at the coreset's cost, on a uniform random
    subset per child (``"subset"``). From ``start`` on, child ``b`` trains on
    ``draw(epoch)[b]``. With a coreset file, ``start`` is 0, the file's
    scores are used and its selection is the first epoch's subset.
    """

    def __init__(self, bits: list[int], n: int, *, fraction: float, score: str, sampling: str,
                 seed: int, warmup: int, rescore_every: int = 0, file: CoresetFile | None = None,
                 warmup_data: str = "full", mix: float = UNIFORM_MIX):
        if warmup_data not in ("full", "subset"):
            raise ValueError(f"unknown warm-up data {warmup_data!r} (full or subset)")
        self.warmup_data = warmup_data
        self.bits, self.n = list(bits), int(n)
        self.fraction, self.score, self.sampling, self.mix = fraction, score, sampling, float(mix)
        self.seed, self.rescore_every = int(seed), int(rescore_every)
        self.start = 0 if file is not None else int(warmup)
        self.scores: dict[int, torch.Tensor] = {}
        self.first: dict[int, torch.Tensor] = {}
        self.scored_epoch = -1
        self.subsets: dict[int, torch.Tensor] = {}
        self.subset_epoch = -1
        if file is not None:
            self.scores = {b: file.scores[b].float().clone() for b in self.bits}
            self.first = {b: file.indices[b].clone() for b in self.bits}
            self.scored_epoch = 0
        self.trackers = ({b: ForgettingTracker(self.n) for b in self.bits}
                         if score == "forgetting" else {})

    # --- schedule --------------------------------------------------------------
    @property
    def enabled(self) -> bool:
        return self.fraction < 1.0

    @property
    def k(self) -> int:
        return subset_size(self.n, self.fraction) if self.enabled else self.n

    def active(self, epoch: int) -> bool:
        return self.enabled and epoch >= self.start

    def needs_scores(self, epoch: int) -> bool:
        if not self.active(epoch) or self.sampling == "random":  # uniform draws: no scoring pass
            return False
        if not self.scores:
            return True
        since = epoch - self.start
        return (self.rescore_every > 0 and since > 0 and since % self.rescore_every == 0
                and self.scored_epoch != epoch)

    def set_scores(self, scores: dict[int, torch.Tensor], epoch: int) -> None:
        self.scores = {b: scores[b].detach().float().cpu() for b in self.bits}
        self.scored_epoch = int(epoch)

    # --- draws ---------------------------------------------------------------------
    def draw(self, epoch: int) -> dict[int, torch.Tensor | None]:
        """Each child's subset for ``epoch`` (None = the full data)."""
        if not self.enabled or (not self.active(epoch) and self.warmup_data == "full"):
            return {b: None for b in self.bits}
        if self.subset_epoch == epoch and self.subsets:
            return dict(self.subsets)
        if not self.active(epoch):  # warm-up at the coreset's cost: uniform draws, no scores yet
            uniform = torch.ones(self.n)
            subsets = {b: draw_subset(uniform, self.fraction, "random", seed=self.seed, epoch=epoch, bit=b)
                       for b in self.bits}
        elif epoch == self.start and self.first:
            subsets = dict(self.first)
        else:
            flat = torch.ones(self.n)
            subsets = {b: draw_subset(self.scores.get(b, flat), self.fraction, self.sampling, seed=self.seed,
                                      epoch=epoch, bit=b, mix=self.mix) for b in self.bits}
        self.subsets, self.subset_epoch = subsets, int(epoch)
        return dict(subsets)

    # --- forgetting ---------------------------------------------------------------
    def observe(self, bit: int, idx: torch.Tensor, correct: torch.Tensor) -> None:
        if self.trackers:
            self.trackers[bit].update(idx, correct)

    def tracked_scores(self) -> dict[int, torch.Tensor]:
        return {b: t.scores() for b, t in self.trackers.items()}

    # --- resume ---------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"n": self.n, "seed": self.seed, "start": self.start,
                "scored_epoch": self.scored_epoch, "subset_epoch": self.subset_epoch,
                "scores": {str(b): t for b, t in self.scores.items()},
                "first": {str(b): t for b, t in self.first.items()},
                "subsets": {str(b): t for b, t in self.subsets.items()},
                "forgetting": {str(b): t.state_dict() for b, t in self.trackers.items()}}

    def load_state_dict(self, state: dict) -> None:
        if int(state["n"]) != self.n:
            raise ValueError(f"coreset state is for {state['n']} samples, the run has {self.n}")
        self.seed, self.start = int(state["seed"]), int(state["start"])
        self.scored_epoch, self.subset_epoch = int(state["scored_epoch"]), int(state["subset_epoch"])
        self.scores = {int(b): t.float() for b, t in state["scores"].items()}
        self.first = {int(b): t.long() for b, t in state["first"].items()}
        self.subsets = {int(b): t.long() for b, t in state["subsets"].items()}
        for b, st in state.get("forgetting", {}).items():
            if int(b) in self.trackers:
                self.trackers[int(b)].load_state_dict(st)

    def summary(self, epoch: int) -> dict:
        """JSON-able figures for the epoch metrics: subset size and mean pairwise overlap."""
        if not self.enabled or self.subset_epoch != epoch or not self.subsets:
            return {"coreset_size": self.n}
        out = {"coreset_size": self.k}
        bs = self.bits
        pairs = [overlap(self.subsets[a], self.subsets[b]) for i, a in enumerate(bs) for b in bs[i + 1:]]
        if pairs:
            out["coreset_overlap"] = sum(pairs) / len(pairs)
        return out
