"""Quantizer building blocks: small modules holding a quantizer's state
(learned clip, LSQ steps) around the pure math in :mod:`functional`.

Every quantizer is called as ``q(x, bits)``; the bit-width is owned by the
layer, so one quantizer object serves every width of a multi-bit model.
"""
from __future__ import annotations

import torch
from torch import nn

from . import functional as F

_MAX_BITS = 16  # LSQ keeps one step per width 1..16


class DoReFaWeight(nn.Module):
    """Any-Precision / DoReFa weights (1-bit capable)."""

    supports_1bit = True

    def __init__(self, fp_path: str = "identity"):
        super().__init__()
        self.fp_path = fp_path

    def forward(self, w: torch.Tensor, bits: int) -> torch.Tensor:
        return F.dorefa_weight(w, bits, self.fp_path)

    def with_reference(self, w: torch.Tensor, bits: int):
        """(weight at ``bits``, FP-path weight) in one pass; only for the tanh FP path."""
        if self.fp_path != "tanh" or F.is_fp(bits):
            return self(w, bits), self(w, F.FP_BITS)
        return F.dorefa_weight_and_reference(w, bits)

    def corrected(self, w: torch.Tensor, bits: int, per_channel: bool) -> torch.Tensor | None:
        """The weight at ``bits`` bias-corrected to the FP path in one fused pass, where
        there is one (the tanh FP path); None: compose ``with_reference`` and WBC."""
        if self.fp_path != "tanh" or F.is_fp(bits):
            return None
        return F.dorefa_wbc_weight(w, bits, per_channel)

    def extra_repr(self) -> str:
        return f"fp_path={self.fp_path}"


class RoundClampWeight(nn.Module):
    """MSQ RoundClamp: two's-complement grid with step s / 2^(n-1), s = max|w| over the
    layer or (``per_channel``) over each output channel."""

    supports_1bit = False

    def __init__(self, per_channel: bool = False):
        super().__init__()
        self.per_channel = per_channel

    def scale(self, w: torch.Tensor) -> torch.Tensor:
        return F.roundclamp_scale(w, self.per_channel)

    def forward(self, w: torch.Tensor, bits: int) -> torch.Tensor:
        return F.roundclamp_weight(w, bits, self.scale(w))

    def extra_repr(self) -> str:
        return f"per_channel={self.per_channel}"


class _LSQBase(nn.Module):
    """One learned step per bit-width, initialised on the first use of that width."""

    signed = True

    def __init__(self):
        super().__init__()
        self.step = nn.Parameter(torch.ones(_MAX_BITS + 1))
        self.register_buffer("initialized", torch.zeros(_MAX_BITS + 1, dtype=torch.bool))

    def _init_step(self, x: torch.Tensor, bits: int) -> None:
        if not bool(self.initialized[bits]):
            with torch.no_grad():
                self.step[bits] = F.lsq_init_step(x, bits, self.signed).clamp_min(1e-8)
                self.initialized[bits] = True

    def _quant(self, x: torch.Tensor, bits: int) -> torch.Tensor:
        if F.is_fp(bits):
            return x
        self._init_step(x, bits)
        qmin, qmax = F.lsq_range(bits, self.signed)
        gscale = 1.0 / (x.numel() * max(qmax, 1)) ** 0.5
        return F.lsq_quantize(x, self.step[bits], qmin, qmax, gscale)


class LSQWeight(_LSQBase):
    supports_1bit = False
    signed = True

    def forward(self, w: torch.Tensor, bits: int) -> torch.Tensor:
        return self._quant(w, bits)


class _ActQuantizer(nn.Module):
    """An activation quantizer: unsigned (its input is a ReLU's output) unless ``signed``,
    which ``quantize_model`` sets where the input can be negative; a signed input is
    clipped to [-clip, clip] on a symmetric grid instead of at 0."""

    supports_1bit = True
    signed = False

    def extra_repr(self) -> str:
        return "signed=True" if self.signed else ""


class ClampAct(_ActQuantizer):
    """q_b(clamp(x, 0, 1)) — the Any-Precision / DoReFa activation ([-1, 1] if signed)."""

    def forward(self, x: torch.Tensor, bits: int) -> torch.Tensor:
        return F.signed_act(x, 1.0, bits) if self.signed else F.clamp_act(x, bits)


class ClampActFP(ClampAct):
    """ClampAct whose FP path clamps to [0, 1] too (without rounding), so every width
    feeds the next layer the same range (what a BN shared by all widths needs)."""

    def forward(self, x: torch.Tensor, bits: int) -> torch.Tensor:
        if not F.is_fp(bits):
            return super().forward(x, bits)
        return x.clamp(-1 if self.signed else 0, 1)


class PACTAct(_ActQuantizer):
    """PACT/SAT activation with a learned clip alpha shared by all widths."""

    def __init__(self, init_alpha: float = 6.0):
        super().__init__()
        self.alpha = nn.Parameter(torch.tensor(float(init_alpha)))

    def clip(self, bits: int) -> torch.Tensor:
        """The clip used at ``bits`` (export reads it from here)."""
        return self.alpha

    def forward(self, x: torch.Tensor, bits: int) -> torch.Tensor:
        if self.signed:
            return F.signed_act(x, self.clip(bits), bits)
        return F.pact_act(x, self.clip(bits), bits)


class PACTActFP(PACTAct):
    """PACTAct whose FP path clips to [0, clip] too (without rounding): the limit of the
    quantized widths, so a BN shared by all widths sees one range at FP as well."""

    def forward(self, x: torch.Tensor, bits: int) -> torch.Tensor:
        if not F.is_fp(bits):
            return super().forward(x, bits)
        if self.signed:
            return F.signed_clip(x, self.clip(bits))
        return torch.minimum(x.clamp(min=0), self.clip(bits).to(x.dtype))


class PACTWidthAct(PACTAct):
    """PACT with one learned clip whose use is scaled per width: alpha is the 8-bit (and
    FP) clip and a b-bit width clips at alpha * r(b), r the ratio of MSE-optimal clips of
    a rectified Gaussian (0.46 at 2 bits). A single shared clip is a compromise that leaves
    coarse widths with a few wide levels (docs/benchmarks.md); the ratio is defined at every
    width, so widths never trained get a clip too."""

    def clip(self, bits: int) -> torch.Tensor:
        r = F.width_clip_ratio(bits)
        return self.alpha if r == 1.0 else self.alpha * r


class PACTWidthActFP(PACTWidthAct, PACTActFP):
    """PACTWidthAct with PACTActFP's FP path (clipped to [0, alpha])."""


class LSQAct(_LSQBase):
    supports_1bit = True
    signed = False  # set where the input can be negative: the two's-complement range

    def forward(self, x: torch.Tensor, bits: int) -> torch.Tensor:
        if self.signed and bits == 1:  # two's complement has no +1: the sign grid, the step as clip
            self._init_step(x, bits)
            return F.signed_act(x, self.step[bits], bits)
        return self._quant(x, bits)

    def extra_repr(self) -> str:
        return "signed=True" if self.signed else ""


class NoAct(_ActQuantizer):
    """Activations stay float at every width."""

    def forward(self, x: torch.Tensor, bits: int) -> torch.Tensor:
        return x


WEIGHT_QUANTIZERS = {"dorefa": DoReFaWeight, "roundclamp": RoundClampWeight, "lsq": LSQWeight}
ACT_QUANTIZERS = {"clamp": ClampAct, "clamp_fp": ClampActFP, "pact": PACTAct, "pact_fp": PACTActFP,
                  "pact_width": PACTWidthAct, "pact_width_fp": PACTWidthActFP, "lsq": LSQAct, "none": NoAct}
