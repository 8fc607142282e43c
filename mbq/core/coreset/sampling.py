"""Per-bit subset draws. Pure functions: scores + seed in, indices out.

Every draw is a function of (seed, epoch, bit) only, so a resumed run, a
second rank under torchrun or a rerun with the same ``--seed`` draws the
same subsets.
"""
from __future__ import annotations

import itertools

import torch

_MASK = (1 << 63) - 1


def mix_seed(*parts: int) -> int:
    """One 63-bit seed from several ints (splitmix64 steps; distinct inputs -> distinct streams)."""
    h = 0x9E3779B97F4A7C15
    for p in parts:
        h = (h ^ (int(p) & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        h = (h ^ (h >> 31)) * 0x94D049BB133111EB & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 29
    return h & _MASK


def subset_size(n: int, fraction: float) -> int:
    return max(1, min(n, int(round(fraction * n))))


def _generator(seed: int, epoch: int, bit: int) -> torch.Generator:
    return torch.Generator().manual_seed(mix_seed(seed, epoch, bit))


UNIFORM_MIX = 0.5


def _weights(scores: torch.Tensor, mix: float = UNIFORM_MIX) -> torch.Tensor:
    """Sampling weights: (1 - mix) * score / mean score + mix (defensive importance sampling).

    At the default mix of 0.5, half the draw follows the scores and half is uniform
    (score plus the mean score); at 0 it is proportional to the score, with a floor
    of 1e-3 of the mean so zero-score images stay drawable. Proportional to EL2N alone,
    nearly the whole subset is the hardest few percent of the data (most images
    score ~0 once learned), and the model trained on it generalises worse
    (docs/emq.md, "Choosing the defaults").
    """
    s = scores.double().clamp_min(0)
    mean = s.mean()
    if not torch.isfinite(mean) or mean <= 0:
        return torch.ones_like(s)
    return (1 - mix) * s / mean + max(mix, 1e-3)


def gumbel_topk(weights: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
    """k indices drawn without replacement with probability proportional to ``weights``.

    Gumbel top-k: the k largest log(w_i) + G_i, G_i ~ Gumbel(0, 1), are a
    sample of successive proportional draws (Plackett-Luce).
    """
    u = torch.rand(weights.shape, generator=gen, dtype=torch.float64).clamp_(1e-300, 1.0)
    keys = weights.double().log() - torch.log(-torch.log(u))
    return torch.topk(keys, k).indices


def stratified(scores: torch.Tensor, k: int, gen: torch.Generator, strata: int = 50) -> torch.Tensor:
    """k indices spread evenly over ``strata`` equal-width score ranges, uniform within each.

    Coverage-centric selection (Zheng et al., ICLR 2023): the budget goes round the
    strata, the smallest first, so a stratum with fewer images than its share gives
    all of them and the rest is shared by the others. Every difficulty level keeps a
    place in the subset, where a draw proportional to the score spends nearly all of
    it on the hardest few percent.
    """
    s = scores.double()
    lo, hi = s.min(), s.max()
    if not torch.isfinite(lo) or not torch.isfinite(hi) or hi <= lo:
        return torch.randperm(s.numel(), generator=gen)[:k]
    bins = ((s - lo) / (hi - lo) * strata).long().clamp_(0, strata - 1)
    order = torch.argsort(bins, stable=True)
    counts = torch.bincount(bins, minlength=strata).tolist()
    starts = [0, *itertools.accumulate(counts[:-1])]
    left, picked = k, []
    live = sorted((c, j) for j, c in enumerate(counts) if c > 0)
    for i, (c, j) in enumerate(live):
        take = min(c, left // (len(live) - i))
        members = order[starts[j]:starts[j] + c]
        picked.append(members[torch.randperm(c, generator=gen)[:take]])
        left -= take
    return torch.cat(picked)


def draw_subset(scores: torch.Tensor, fraction: float, sampling: str, *, seed: int, epoch: int,
                bit: int, mix: float = UNIFORM_MIX) -> torch.Tensor:
    """Sorted dataset indices of one child's subset for one epoch.

    ``weighted``: proportional to ``scores`` mixed with a uniform share ``mix``,
    without replacement (a fresh draw per epoch); ``topk``: the highest scores (the same every epoch);
    ``stratified``: evenly over score strata, uniform within each (a fresh draw
    per epoch); ``random``: uniform without replacement.
    """
    scores = scores.detach().cpu()
    n = scores.numel()
    k = subset_size(n, fraction)
    if k >= n:
        return torch.arange(n)
    if sampling == "topk":
        idx = torch.topk(scores.double(), k).indices
    elif sampling == "weighted":
        idx = gumbel_topk(_weights(scores, mix), k, _generator(seed, epoch, bit))
    elif sampling == "stratified":
        idx = stratified(scores, k, _generator(seed, epoch, bit))
    elif sampling == "random":
        idx = torch.randperm(n, generator=_generator(seed, epoch, bit))[:k]
    else:
        raise ValueError(f"unknown coreset sampling {sampling!r} (weighted, stratified, topk or random)")
    return idx.sort().values


def overlap(a: torch.Tensor, b: torch.Tensor) -> float:
    """|A ∩ B| / min(|A|, |B|): 1 when one subset contains the other."""
    if a.numel() == 0 or b.numel() == 0:
        return 0.0
    common = torch.isin(a, b).sum().item()
    return common / min(a.numel(), b.numel())
