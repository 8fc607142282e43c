"""Integer form of one fake-quantized layer at its current width.

Every weight quantizer family is an affine grid over integer codes ``q``::

    w[c] = scale[c] * (q[c] - zero_point[c])          (scale/zero_point: [1] or [C])

    dorefa      q in [0, 2^b-1]             scale 2E/(2^b-1)   zero (2^b-1)/2   (1 bit: E*sign)
    roundclamp  q in [-2^(b-1), 2^(b-1)-1]  scale max|w|/2^(b-1)  zero 0  (two's complement)
    lsq         q in [-2^(b-1), 2^(b-1)-1]  scale = learned step   zero 0
    bit planes  q = sign*magnitude, |q| <= 2^(b-1)-1  scale = the planes' step  zero 0  (BSQ)

Weight bias correction (EMQ) is a per-channel affine ``g*w + o`` on top, folded into
``scale' = g*scale`` and ``zero' = zero - o/scale'``.  Codes are read back from the
quantizer's own output (no quantizer math is repeated here) and every result is checked
against the fake-quantized weight it stands for.

Activations entering a quantized layer are codes ``x = act_scale * q``, ``q in [lo, hi]``:
unsigned ``[0, 2^b-1]``, or, where the input can be negative, symmetric ``[-(2^(b-1)-1),
2^(b-1)-1]`` (two's complement for LSQ); a float input may still be clipped (``clamp_fp``
at 32 bits).
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch

from ..errors import MbqError, RunFailed
from ..quant import functional as F
from ..quant.bitplane import OnGrid, plane_params
from ..quant.quantizers import ClampAct, DoReFaWeight, LSQAct, LSQWeight, NoAct, PACTAct, RoundClampWeight

MAX_PACKED_BITS = 8


@dataclass
class WeightCodes:
    codes: torch.Tensor       # int64, the layer's weight shape
    bits: int
    signed: bool
    scale: torch.Tensor       # float64 [1] or [C]
    zero_point: torch.Tensor  # float64 [1] or [C]
    quantizer: str

    def _per_channel(self, t: torch.Tensor) -> torch.Tensor:
        return t.reshape(-1, *([1] * (self.codes.dim() - 1)))

    def dequantize(self) -> torch.Tensor:
        return self._per_channel(self.scale) * (self.codes.double() - self._per_channel(self.zero_point))

    def channel_affine(self, gain: torch.Tensor, offset: torch.Tensor) -> "WeightCodes":
        """The codes of ``gain[c] * w + offset[c]`` (WBC, BatchNorm folding)."""
        gain, offset = gain.double().reshape(-1), offset.double().reshape(-1)
        scale = self.scale * gain
        safe = torch.where(scale == 0, torch.ones_like(scale), scale)
        if bool(((scale == 0) & (offset != 0)).any()):
            raise RunFailed("a channel with zero weight scale but a non-zero offset has no "
                            "integer form")
        zero = self.zero_point - torch.where(scale == 0, torch.zeros_like(offset), offset / safe)
        return WeightCodes(self.codes, self.bits, self.signed, _compact(scale), _compact(zero),
                           self.quantizer)


def _compact(t: torch.Tensor) -> torch.Tensor:
    """[C] -> [1] when every channel holds the same value (smaller files)."""
    return t[:1].clone() if t.numel() > 1 and bool((t == t[0]).all()) else t


@dataclass
class ActCodes:
    bits: int
    scale: float
    lo: int
    hi: int
    quantizer: str


def _dorefa(layer, wq: torch.Tensor, bits: int) -> WeightCodes:
    # every level is E*(2q/n - 1) and the extreme one is always hit, so E = max|w_q|
    n = (1 << bits) - 1
    e = wq.double().abs().amax().clamp_min(1e-30)
    q = torch.round((wq.double() / e + 1) * n / 2).long()
    one = torch.ones(1, dtype=torch.float64)
    return WeightCodes(q, bits, False, one * (2 * e / n), one * (n / 2), "dorefa")


def _roundclamp(layer, wq: torch.Tensor, bits: int) -> WeightCodes:
    w = layer.weight.detach()
    scale = layer.weight_quant.scale(w)  # per layer, or [C, 1, ...] per output channel
    q = F.roundclamp_codes(w, bits, scale).long()
    step = F.roundclamp_step(scale.double(), bits).reshape(-1)
    return WeightCodes(q, bits, True, step, torch.zeros_like(step), "roundclamp")


def _on_step(wq: torch.Tensor, step: torch.Tensor, bits: int, name: str) -> WeightCodes:
    q = torch.round(wq.detach() / step).long()
    return WeightCodes(q, bits, True, step.double().reshape(1), torch.zeros(1, dtype=torch.float64),
                       name)


def _lsq(layer, wq: torch.Tensor, bits: int) -> WeightCodes:
    return _on_step(wq, layer.weight_quant.step[bits].detach(), bits, "lsq")


def _bit_planes(layer, wq: torch.Tensor, bits: int) -> WeightCodes:
    # the weight is already Δ·sign·magnitude; Δ lives in the BitPlanes parametrization
    return _on_step(wq, plane_params(layer)[2].step.detach(), bits, "bitplanes")


_WEIGHT_FAMILIES = {DoReFaWeight: _dorefa, RoundClampWeight: _roundclamp, LSQWeight: _lsq,
                    OnGrid: _bit_planes}


def _check(name: str, wc: WeightCodes, target: torch.Tensor, what: str) -> None:
    err = (wc.dequantize() - target.detach().double()).abs().max().item()
    tol = 1e-4 * target.detach().abs().max().item() + 1e-12
    if not err <= tol:
        raise RunFailed(f"{name}: the {what} does not lie on the {wc.quantizer} integer grid "
                        f"(max error {err:.3g}); export cannot represent it")


@torch.no_grad()
def weight_codes(name: str, layer) -> WeightCodes | None:
    """Codes of a QConv2d/QLinear's weight at its current width; None when it is float."""
    bits = layer.bits[0]
    if F.is_fp(bits):
        return None
    if bits > MAX_PACKED_BITS:
        raise MbqError(f"layer {name} has {bits}-bit weights; export handles 1..8 bits and float")
    family = _WEIGHT_FAMILIES.get(type(layer.weight_quant))
    if family is None:
        raise MbqError(f"layer {name}: no integer form for the {type(layer.weight_quant).__name__} "
                       "weight quantizer")
    if not bool(torch.isfinite(layer.weight).all()):
        raise MbqError(f"layer {name} has NaN/inf weights (the run diverged); nothing to export")
    wq = layer.weight_quant(layer.weight, bits)
    wc = family(layer, wq, bits)
    _check(name, wc, wq, f"{bits}-bit weight")
    if layer.wbc:
        gain, offset = F.wbc_affine(wq, layer.reference_weight(), layer.wbc_per_channel)
        wc = wc.channel_affine(gain, offset)
        _check(name, wc, layer.quantized_weight(), "bias-corrected weight")
    lo, hi = F.lsq_range(bits, True) if wc.signed else (0, (1 << bits) - 1)
    if int(wc.codes.min()) < lo or int(wc.codes.max()) > hi:
        raise RunFailed(f"{name}: codes fall outside the {bits}-bit range")
    return wc


_PROBE = (-2.0, -0.5, 0.0, 0.25, 0.7, 1.0, 1.5, 3.0)


@torch.no_grad()
def _float_input(name: str, aq, bits: int) -> ActCodes | None:
    """A float input passes unchanged (None) or is clipped to [0, 1] (``clamp_fp``) or to
    [0, alpha] (``pact_fp``): probe it."""
    state = next(itertools.chain(aq.parameters(), aq.buffers()), torch.empty(0))
    x = torch.tensor(_PROBE, device=state.device)
    y = aq(x, bits)
    if torch.equal(y, x):
        return None
    lo = -1 if aq.signed else 0
    if torch.equal(y, x.clamp(lo, 1)):
        return ActCodes(bits, 1.0, lo, 1, "clip")  # float input, clipped to [lo, hi] * scale
    alpha = aq.clip(bits).detach() if isinstance(aq, PACTAct) else None  # pact_fp: clipped to [0, alpha]
    if alpha is not None and torch.equal(y, (x.clamp(min=0) if lo == 0 else x).clamp(lo * alpha, alpha)):
        return ActCodes(bits, float(alpha), lo, 1, "clip")
    raise MbqError(f"layer {name}: the {type(aq).__name__} activation quantizer changes float "
                   "inputs in a way export cannot represent")


def act_codes_params(name: str, layer) -> ActCodes | None:
    """How the layer quantizes its input at its current width.

    None for a float input; ``bits`` above 8 means a float input clipped to
    ``[lo, hi] * scale`` (no codes).
    """
    bits, aq = layer.bits[1], layer.act_quant
    if F.is_fp(bits) or isinstance(aq, NoAct):
        return _float_input(name, aq, bits)
    if bits > MAX_PACKED_BITS:
        raise MbqError(f"layer {name} has {bits}-bit activations; export handles 1..8 bits and float")
    if aq.signed and bits == 1:
        raise MbqError(f"layer {name}: its input can be negative and 1-bit signed activations (the "
                       "sign grid) have no integer form with a zero code; it needs 2-bit or wider "
                       "activations (--act-bits, or --first-last-bits for the first layer)")
    n = F.signed_levels(bits) if aq.signed else (1 << bits) - 1
    lo = -n if aq.signed else 0
    if isinstance(aq, ClampAct):
        return ActCodes(bits, 1.0 / n, lo, n, "clamp")
    if isinstance(aq, PACTAct):
        return _positive(name, ActCodes(bits, float(aq.clip(bits).detach()) / n, lo, n, "pact"))
    if isinstance(aq, LSQAct):
        if not bool(aq.initialized[bits]):
            raise MbqError(f"layer {name}: the LSQ activation step for {bits} bits was never "
                           "initialised (the model never ran at that width)")
        lo, hi = F.lsq_range(bits, aq.signed)
        return _positive(name, ActCodes(bits, float(aq.step[bits].detach()), lo, hi, "lsq"))
    raise MbqError(f"layer {name}: no integer form for the {type(aq).__name__} activation quantizer")


def _positive(name: str, a: ActCodes) -> ActCodes:
    if not a.scale > 0:
        raise MbqError(f"layer {name}: the {a.quantizer} activation step is {a.scale:g}; "
                       "a quantizer step must be positive")
    return a


def act_codes(x: torch.Tensor, scale: float, lo: int, hi: int) -> torch.Tensor:
    """Integer codes of ``x`` (float dtype), from the same fused kernel clamp_act uses."""
    return torch.round(torch.fake_quantize_per_tensor_affine(x.float(), scale, 0, lo, hi) / scale)
