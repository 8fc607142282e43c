"""MSQ bit-pruning decisions as plain functions on plain data.

Layers are :class:`LayerBits` records; schemes are ``{name: bits}`` dicts.
Nothing here touches a model, so every rule is testable on numbers alone
(:func:`lsb_nonzero_rate` is the one tensor function: the rate a rule reads).

Compression ratio everywhere: C = 32·ΣN / Σ min(n, 32)·N.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping

FP_BITS = 32
WIDTHS = (1, 2, 3, 4, 5, 6, 7, 8, 16, 32)


@dataclass(frozen=True)
class LayerBits:
    name: str
    params: int
    bits: int
    prunable: bool = True


@dataclass(frozen=True)
class Prune:
    """One pruning decision: ``layer`` goes from ``before`` to ``after`` bits."""

    layer: str
    before: int
    after: int


def compression(layers: Iterable[LayerBits], bits: Mapping[str, int] | None = None) -> float:
    bits = bits or {}
    total = used = 0
    for lay in layers:
        total += lay.params
        used += lay.params * min(bits.get(lay.name, lay.bits), FP_BITS)
    return FP_BITS * total / used if used else 1.0


def max_compression(layers: Iterable[LayerBits], min_bits: int) -> float:
    """The ratio with every prunable layer at ``min_bits`` (layers already below keep theirs)."""
    layers = list(layers)
    floor = {lay.name: min(lay.bits, min_bits) for lay in layers if lay.prunable}
    return compression(layers, floor)


def omega(trace: float, params: int, qerr: float) -> float:
    """HAWQ-V2 sensitivity Ω = (Tr(H)/N) · ||Q(W) − W||²."""
    return trace / params * qerr


def k_rule(omegas: Mapping[str, float], bits: Mapping[str, int], min_bits: int, *,
           guided: bool = True, k_sensitive: int = 1, k_insensitive: int = 2,
           uniform_k: int = 1) -> dict[str, int]:
    """Bits each layer may lose in the next round.

    Guided: k_sensitive above the mean Ω, k_insensitive at or below it;
    otherwise ``uniform_k``. Never below ``min_bits`` (k = 0 at the floor).
    """
    if not omegas:
        return {}
    threshold = sum(omegas.values()) / len(omegas)
    out = {}
    for name, om in omegas.items():
        k = (k_sensitive if om > threshold else k_insensitive) if guided else uniform_k
        out[name] = max(0, min(k, bits[name] - min_bits))
    return out


def _prune_until(layers: list[LayerBits], bits: dict[str, int], order: list[str],
                 ks: Mapping[str, int], target: float | None) -> list[Prune]:
    """Prune ``order`` one layer at a time; stop as soon as ``target`` is met."""
    events = []
    for name in order:
        if target is not None and compression(layers, bits) >= target:
            break
        k = min(ks.get(name, 0), bits[name] - 1)
        if k <= 0:
            continue
        events.append(Prune(name, bits[name], bits[name] - k))
        bits[name] -= k
    return events


def msq_round(layers: list[LayerBits], ks: Mapping[str, int], rates: Mapping[str, float],
              alpha: float, target: float | None) -> tuple[dict[str, int], list[Prune]]:
    """One MSQ round: every prunable layer with k > 0 and rate < alpha loses k bits;
    if that would pass ``target``, only the lowest-rate ones, until it is met."""
    bits = {lay.name: lay.bits for lay in layers}
    cands = [lay.name for lay in layers
             if lay.prunable and ks.get(lay.name, 0) > 0 and rates.get(lay.name, 1.0) < alpha]
    cands.sort(key=lambda n: (rates[n], n))
    return bits, _prune_until(layers, bits, cands, ks, target)


def forced_round(layers: list[LayerBits], ks: Mapping[str, int], rates: Mapping[str, float],
                 target: float, min_bits: int) -> tuple[dict[str, int], list[Prune]]:
    """The deadline round: all prunable layers, lowest rate first, until ``target``.

    Repeats the pass (k clipped at ``min_bits``) when one pass is not enough;
    stops early only when nothing is left to prune.
    """
    bits = {lay.name: lay.bits for lay in layers}
    order = sorted((lay.name for lay in layers if lay.prunable),
                   key=lambda n: (rates.get(n, 1.0), n))
    events: list[Prune] = []
    while compression(layers, bits) < target:
        kk = {n: max(0, min(ks.get(n, 1) or 1, bits[n] - min_bits)) for n in order}
        step = _prune_until(layers, bits, order, kk, target)
        if not step:
            break
        events += step
    return bits, events


def _next_lower(bits: int, min_bits: int) -> int | None:
    lower = [w for w in WIDTHS if min_bits <= w < bits]
    return max(lower) if lower else None


def greedy_to_target(layers: list[LayerBits], omega_at: Mapping[str, Mapping[int, float]],
                     target: float, min_bits: int) -> tuple[dict[str, int], list[dict]]:
    """Lower, one width at a time, the layer whose Ω increase per bit saved is
    smallest, until ``target`` is met. ``omega_at[layer][bits]`` is Ω at that width.

    Returns the scheme and the steps taken (layer, before, after, d_omega, cost).
    """
    bits = {lay.name: lay.bits for lay in layers}
    size = {lay.name: lay.params for lay in layers}
    steps = []
    while compression(layers, bits) < target:
        best = None
        for lay in layers:
            if not lay.prunable:
                continue
            cur = bits[lay.name]
            nxt = _next_lower(cur, min_bits)
            if nxt is None or nxt not in omega_at[lay.name]:
                continue
            d = omega_at[lay.name][nxt] - omega_at[lay.name][cur]
            cost = d / ((cur - nxt) * size[lay.name])
            if best is None or (cost, lay.name) < (best[0], best[1]):
                best = (cost, lay.name, cur, nxt, d)
        if best is None:
            break
        cost, name, cur, nxt, d = best
        bits[name] = nxt
        steps.append({"layer": name, "before": cur, "after": nxt, "d_omega": d, "cost": cost})
    return bits, steps


def lsb_nonzero_rate(w, bits: int, k: int, scale=None) -> float:
    """Fraction of a layer's weights whose k LSBs are not zero at ``bits`` (RoundClamp with
    range ``scale``; None: max|w| over the layer)."""
    from .quant.functional import lsb_residual, roundclamp_scale

    scale = roundclamp_scale(w) if scale is None else scale
    return (lsb_residual(w, bits, k, scale) != 0).float().mean().item()
