"""Bit-width pairs as tasks (MEBQAT): which (weight, activation) pairs are
valid, and how a meta-batch of them is drawn. Pure Python, torch-free.

Validity (Youn et al., ECCV 2022): FP weights only with FP activations;
1-bit weights only with 1-bit or FP activations; 1-bit activations only
with 1-bit weights. Over {1..8, 16, FP} that is 75 pairs, 73 without 1.
"""
from __future__ import annotations

import random
from typing import Sequence

FP = 32
ALL_WIDTHS = (1, 2, 3, 4, 5, 6, 7, 8, 16, FP)

Pair = tuple[int, int]


def is_valid_pair(w: int, a: int) -> bool:
    if w == FP:
        return a == FP
    if a == FP:
        return True
    if w == 1 or a == 1:
        return w == 1 and a == 1
    return True


def valid_pairs(w_bits: Sequence[int], a_bits: Sequence[int] | None = None) -> list[Pair]:
    """Every valid (w, a) with w from ``w_bits`` and a from ``a_bits`` (default: the same set).

    Sorted by weight then activation width (FP last), so listings are stable.
    """
    ws = sorted(set(int(b) for b in w_bits))
    as_ = sorted(set(int(b) for b in (w_bits if a_bits is None else a_bits)))
    return [(w, a) for w in ws for a in as_ if is_valid_pair(w, a)]


def sample_tasks(pairs: Sequence[Pair], m: int, guaranteed: Sequence[Pair] = (),
                 rng: random.Random | None = None) -> list[Pair]:
    """A meta-batch of ``m`` tasks: ``guaranteed`` first, the rest uniform over the others.

    The rest are drawn without replacement while distinct pairs remain (no
    task is back-propagated twice in one step), then again from a fresh draw.
    ``rng`` must be seeded identically on every DDP rank.
    """
    guaranteed = list(guaranteed)
    if m < len(guaranteed):
        raise ValueError(f"meta-batch {m} is smaller than the {len(guaranteed)} guaranteed task(s)")
    missing = [p for p in guaranteed if p not in pairs]
    if missing:
        raise ValueError(f"guaranteed task {missing[0]} is not among the valid pairs")
    rest = [p for p in pairs if p not in guaranteed] or list(guaranteed)
    rng = rng or random.Random()
    out, pool = list(guaranteed), []
    while len(out) < m:
        if not pool:
            pool = list(rest)
            rng.shuffle(pool)
        out.append(pool.pop())
    return out
