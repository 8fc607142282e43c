"""Fake-quantized layers (drop-in subclasses of nn.Conv2d / nn.Linear) and
switchable BatchNorm.

A layer's current widths live in the buffers ``w_bits`` / ``a_bits`` so that
state_dict, safetensors and DDP broadcasts carry them; a Python-int mirror
avoids a device sync per forward and is refreshed on every load.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as TF

from . import functional as F
from .quantizers import ACT_QUANTIZERS, WEIGHT_QUANTIZERS


class _QuantLayer:
    """Shared state/behaviour of QConv2d and QLinear (a mixin over nn.Module)."""

    def _init_quant(self, weight_quant: str = "dorefa", act_quant: str = "clamp", w_bits: int = 32,
                    a_bits: int = 32, fp_path: str = "identity", wbc: bool = False,
                    wbc_detach: bool = False, wbc_per_channel: bool = True, pinned: bool = False):
        wq_cls = WEIGHT_QUANTIZERS[weight_quant]
        self.weight_quant = wq_cls(fp_path) if weight_quant == "dorefa" else wq_cls()
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
        bits = self._wb if bits is None else bits
        w_q = self.weight_quant(self.weight, bits)
        if self.wbc and not F.is_fp(bits):
            w_q = F.weight_bias_correction(w_q, self.reference_weight(), self.wbc_per_channel,
                                           self.wbc_detach)
        return w_q

    def quantized_input(self, x: torch.Tensor) -> torch.Tensor:
        return self.act_quant(x, self._ab)


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
