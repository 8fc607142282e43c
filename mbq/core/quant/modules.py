"""Fake-quantized layers (drop-in subclasses of nn.Conv2d / nn.Linear),
switchable BatchNorm and BatchNorm with per-width statistics.

A layer's current widths live in the buffers ``w_bits`` / ``a_bits`` so that
state_dict, safetensors and DDP broadcasts carry them; a Python-int mirror
avoids a device sync per forward and is refreshed on every load.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn
from torch.nn import functional as TF

from . import functional as F
from .quantizers import ACT_QUANTIZERS, WEIGHT_QUANTIZERS


class _QuantLayer:
    """Shared state/behaviour of QConv2d and QLinear (a mixin over nn.Module)."""

    def _init_quant(self, weight_quant: str = "dorefa", act_quant: str = "clamp", w_bits: int = 32,
                    a_bits: int = 32, fp_path: str = "identity", wbc: bool = False,
                    wbc_detach: bool = False, wbc_per_channel: bool = True, pinned: bool = False,
                    w_scale: str = "tensor"):
        wq_cls = WEIGHT_QUANTIZERS[weight_quant]
        if weight_quant == "dorefa":
            self.weight_quant = wq_cls(fp_path)
        elif weight_quant == "roundclamp":
            self.weight_quant = wq_cls(per_channel=w_scale == "channel")
        else:
            self.weight_quant = wq_cls()
        self.act_quant = ACT_QUANTIZERS[act_quant]()
        self.register_buffer("w_bits", torch.tensor(int(w_bits), dtype=torch.int64))
        self.register_buffer("a_bits", torch.tensor(int(a_bits), dtype=torch.int64))
        self.wbc, self.wbc_detach, self.wbc_per_channel = wbc, wbc_detach, wbc_per_channel
        self.pinned = pinned  # first/last layer: set_bits leaves it alone
        self._wb, self._ab = int(w_bits), int(a_bits)
        self.register_load_state_dict_post_hook(_refresh_bits_cache)

    # precision -------------------------------------------------------------
    @property
    def bits(self) -> tuple[int, int]:
        return self._wb, self._ab

    def set_precision(self, w: int | None = None, a: int | None = None) -> None:
        if w is not None:
            self.w_bits.fill_(int(w))
            self._wb = int(w)
        if a is not None:
            self.a_bits.fill_(int(a))
            self._ab = int(a)

    # math --------------------------------------------------------------------
    def reference_weight(self) -> torch.Tensor:
        """The FP-path weight (what WBC aligns every width to)."""
        return self.weight_quant(self.weight, F.FP_BITS)

    def quantized_weight(self, bits: int | None = None) -> torch.Tensor:
        frozen = getattr(self, "_frozen_weight", None)  # (bits, weight) inside frozen_weights()
        if bits is None and frozen is not None and frozen[0] == self._wb and not torch.is_grad_enabled():
            return frozen[1]
        bits = self._wb if bits is None else bits
        if not self.wbc or F.is_fp(bits):
            return self.weight_quant(self.weight, bits)
        fused = getattr(self.weight_quant, "corrected", None)
        w_c = fused(self.weight, bits, self.wbc_per_channel) if fused and not self.wbc_detach else None
        if w_c is not None:
            return w_c
        both = getattr(self.weight_quant, "with_reference", None)  # one pass where it can
        w_q, w_ref = both(self.weight, bits) if both else (self.weight_quant(self.weight, bits),
                                                           self.reference_weight())
        return F.weight_bias_correction(w_q, w_ref, self.wbc_per_channel, self.wbc_detach)

    def quantized_input(self, x: torch.Tensor) -> torch.Tensor:
        return self.act_quant(x, self._ab)


@contextmanager
def frozen_weights(model: nn.Module) -> Iterator[None]:
    """Within the block each quantized layer reuses the weight it rounds on entry, at its
    widths then: for no-grad passes over a model that does not change (evaluation, scoring),
    where rounding it again for every batch took a tenth of a small model's run."""
    layers = [m for m in model.modules() if isinstance(m, QUANT_LAYERS)]
    saved = [getattr(m, "_frozen_weight", None) for m in layers]
    try:
        with torch.no_grad():
            for m in layers:
                m._frozen_weight = (m._wb, m.quantized_weight())
        yield
    finally:
        for m, old in zip(layers, saved):
            m._frozen_weight = old


def _refresh_bits_cache(module, _incompatible) -> None:
    module._wb, module._ab = int(module.w_bits), int(module.a_bits)


class QConv2d(_QuantLayer, nn.Conv2d):
    def __init__(self, *args, qkwargs: dict | None = None, **kwargs):
        nn.Conv2d.__init__(self, *args, **kwargs)
        self._init_quant(**(qkwargs or {}))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(self.quantized_input(x), self.quantized_weight(), self.bias)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", w_bits={self._wb}, a_bits={self._ab}"


class QLinear(_QuantLayer, nn.Linear):
    def __init__(self, *args, qkwargs: dict | None = None, **kwargs):
        nn.Linear.__init__(self, *args, **kwargs)
        self._init_quant(**(qkwargs or {}))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return TF.linear(self.quantized_input(x), self.quantized_weight(), self.bias)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", w_bits={self._wb}, a_bits={self._ab}"


QUANT_LAYERS = (QConv2d, QLinear)


class SwitchableBatchNorm2d(nn.Module):
    """One BatchNorm2d per bit-width (Any-Precision DNN); ``active`` picks one."""

    def __init__(self, num_features: int, bits: list[int], **bn_kwargs):
        super().__init__()
        self.num_features = num_features
        self._bn_kwargs = bn_kwargs
        self.bns = nn.ModuleDict({str(b): nn.BatchNorm2d(num_features, **bn_kwargs) for b in bits})
        self.register_buffer("active", torch.tensor(max(bits), dtype=torch.int64))
        self._active = max(bits)
        self.register_load_state_dict_post_hook(_refresh_active_cache)

    @property
    def widths(self) -> list[int]:
        return sorted(int(k) for k in self.bns.keys())

    def has_width(self, bits: int) -> bool:
        return str(int(bits)) in self.bns

    def add_width(self, bits: int) -> nn.BatchNorm2d:
        """Add a BN for an untrained width, initialised from the nearest trained one."""
        near = min(self.widths, key=lambda b: (abs(b - bits), -b))
        bn = nn.BatchNorm2d(self.num_features, **self._bn_kwargs).to(self.active.device)
        bn.load_state_dict(self.bns[str(near)].state_dict())
        self.bns[str(int(bits))] = bn
        return bn

    def set_active(self, bits: int) -> None:
        if not self.has_width(bits):
            raise KeyError(f"no BatchNorm for {bits} bits (have {self.widths})")
        self.active.fill_(int(bits))
        self._active = int(bits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bns[str(self._active)](x)


def _refresh_active_cache(module, _incompatible) -> None:
    module._active = int(module.active)


class WidthStatsBatchNorm2d(nn.BatchNorm2d):
    """A BatchNorm2d whose affine is shared by every bit-width while its running
    statistics are kept per width (EMQ ``--bn-stats per-width``).

    There is a row of statistics for every valid width; a row is *tracked* once
    training (or a re-calibration) has normalised that width. A width without a
    tracked row uses statistics interpolated between the tracked widths around
    it, linearly in the squared quantization step (2^b - 1)^-2 — the quantity
    the statistics drift with (0 at FP) — or the nearest tracked width outside
    their range, so every width evaluates with no data. Training updates the
    active width's row in place; ``set_active`` copies the active width's
    statistics into ``running_mean`` / ``running_var``, which folding and export
    read as usual.
    """

    def __init__(self, num_features: int, **bn_kwargs):
        super().__init__(num_features, **bn_kwargs)
        if not self.track_running_stats:
            raise ValueError("WidthStatsBatchNorm2d needs track_running_stats=True")
        k = len(F.VALID_BITS)
        dev = self.running_mean.device
        self.register_buffer("width_mean", torch.zeros(k, num_features, device=dev))
        self.register_buffer("width_var", torch.ones(k, num_features, device=dev))
        self.register_buffer("width_tracked", torch.zeros(k, dtype=torch.bool, device=dev))
        self.register_buffer("active", torch.tensor(F.FP_BITS, dtype=torch.int64, device=dev))
        self._active = F.FP_BITS
        self._tracked = [False] * k  # Python mirror of width_tracked: no tensor op per forward
        self.register_load_state_dict_post_hook(_refresh_width_stats)

    @staticmethod
    def _row(bits: int) -> int:
        return F.VALID_BITS.index(int(bits))

    @property
    def tracked_widths(self) -> list[int]:
        return [b for b, t in zip(F.VALID_BITS, self._tracked) if t]

    @torch.no_grad()
    def width_statistics(self, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, var) that width ``bits`` normalises with in evaluation."""
        r = self._row(bits)
        if self._tracked[r]:
            return self.width_mean[r], self.width_var[r]
        known = self.tracked_widths
        if not known:  # nothing per width yet (e.g. a plain shared-BN checkpoint): the one estimate
            return self.running_mean, self.running_var
        lo = [b for b in known if b < bits]
        hi = [b for b in known if b > bits]
        if not lo or not hi:
            near = self._row(lo[-1] if lo else hi[0])
            return self.width_mean[near], self.width_var[near]
        d_lo, d, d_hi = (_step_sq(b) for b in (lo[-1], bits, hi[0]))
        t = (d_lo - d) / (d_lo - d_hi)
        i, j = self._row(lo[-1]), self._row(hi[0])
        return (torch.lerp(self.width_mean[i], self.width_mean[j], t),
                torch.lerp(self.width_var[i], self.width_var[j], t))

    @torch.no_grad()
    def set_active(self, bits: int) -> None:
        self._row(bits)  # validates
        self.active.fill_(int(bits))
        self._active = int(bits)
        mean, var = self.width_statistics(bits)
        self.running_mean.copy_(mean)
        self.running_var.copy_(var)

    def reset_running_stats(self) -> None:
        super().reset_running_stats()
        if hasattr(self, "width_tracked"):  # re-calibration: the active width starts afresh
            r = self._row(self._active)
            self.width_mean[r].zero_()
            self.width_var[r].fill_(1)
            self.width_tracked[r] = False
            self._tracked[r] = False

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # a checkpoint from a plain shared BN (older EMQ, --bn-stats batch) has no rows: it
        # loads with none tracked, so every width normalises with its one shared estimate
        for name in ("width_mean", "width_var", "width_tracked", "active"):
            state_dict.setdefault(prefix + name, getattr(self, name))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = self._row(self._active)
        if not self.training:
            if self._tracked[r]:
                return TF.batch_norm(x, self.width_mean[r], self.width_var[r], self.weight, self.bias,
                                     False, 0.0, self.eps)
            # untrained width: set_active put its interpolated statistics in running_*
            return TF.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                                 False, 0.0, self.eps)
        self.num_batches_tracked.add_(1)
        factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        if not self._tracked[r]:
            self._tracked[r] = True
            self.width_tracked[r] = True
        # batch statistics; the active width's row is the running estimate, updated in place
        return TF.batch_norm(x, self.width_mean[r], self.width_var[r], self.weight, self.bias,
                             True, factor, self.eps)


def _refresh_width_stats(module, _incompatible) -> None:
    module._tracked = [bool(t) for t in module.width_tracked.tolist()]
    module.set_active(int(module.active))


def _step_sq(bits: int) -> float:
    return 0.0 if F.is_fp(bits) else float(2 ** bits - 1) ** -2


BN_SWITCHES = (SwitchableBatchNorm2d, WidthStatsBatchNorm2d)
