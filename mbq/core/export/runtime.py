"""Integer reference runtime: rebuild a model from a packed file and run it.

Each rewritten layer computes what an integer accelerator would::

    q_x  = integer codes of the input             (same kernel as the fake-quant model)
    acc  = conv(q_x, q_w) - zero_point[c] * boxsum(q_x)      integer accumulation
    y    = (scale[c] * act_scale) * acc + bias[c]            one rescale per channel

Accumulations run in float32 when every partial sum stays below 2^24 and in float64
otherwise, so they are exact.  Float inputs or float weights run in float64.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as TF

from ..errors import MbqError
from .codes import act_codes
from .plan import ExportPlan, LayerPlan, float_arch

_EXACT_F32 = 1 << 24


class RefLayer(nn.Module):
    """One conv2d/linear layer of a packed model (codes or float weight)."""

    def __init__(self, p: LayerPlan):
        super().__init__()
        self.name, self.kind, self.conv = p.name, p.kind, p.conv
        self.act = p.act
        c = p.codes
        if c is not None:
            self.register_buffer("w", c.codes.double())
            self.register_buffer("scale", c.scale.double())
            self.register_buffer("zero", c.zero_point.double())
            self.has_zero = bool((c.zero_point != 0).any())
        else:
            self.register_buffer("w", p.weight.double())
            self.register_buffer("scale", torch.ones(1, dtype=torch.float64))
            self.register_buffer("zero", torch.zeros(1, dtype=torch.float64))
            self.has_zero = False
        self.register_buffer("bias", None if p.bias is None else p.bias.double())
        fan_in = p.numel // p.shape[0]
        self.codes_in = p.act is not None and p.act.bits <= 8
        exact = c is not None and self.codes_in and \
            max(abs(p.act.lo), abs(p.act.hi)) * (1 << c.bits) * fan_in < _EXACT_F32
        self.acc_dtype = torch.float32 if exact else torch.float64
        self.w = self.w.to(self.acc_dtype)

    def _op(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        if self.kind == "linear":
            return TF.linear(x, w)
        c = self.conv
        return TF.conv2d(x, w, None, c["stride"], c["padding"], c["dilation"], c["groups"])

    def _boxsum(self, x: torch.Tensor) -> torch.Tensor:
        """Sum of the inputs each output sees (per output channel's group)."""
        if self.kind == "linear":
            return x.sum(-1, keepdim=True)
        g = self.conv["groups"]
        ones = torch.ones(g, *self.w.shape[1:], dtype=x.dtype, device=x.device)
        s = self._op(x, ones)
        return s.repeat_interleave(self.w.shape[0] // g, dim=1)

    def _channel(self, t: torch.Tensor) -> torch.Tensor:
        return t if self.kind == "linear" else t.reshape(-1, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, x_scale = self.act, 1.0
        if self.codes_in:
            x, x_scale = act_codes(x, a.scale, a.lo, a.hi), a.scale
        elif a is not None:  # a float input clipped to its range
            x = x.clamp(a.lo * a.scale, a.hi * a.scale)
        dt = self.acc_dtype
        x = x.to(dt)
        acc = self._op(x, self.w).double()
        if self.has_zero:
            acc = acc - self._channel(self.zero) * self._boxsum(x).double()
        y = acc * self._channel(self.scale * x_scale)
        if self.bias is not None:
            y = y + self._channel(self.bias)
        return y.float()

    def extra_repr(self) -> str:
        a = f"{self.act.bits}-bit {self.act.quantizer}" if self.codes_in else \
            "float" if self.act is None else "float, clipped"
        return f"{self.kind}, weight {tuple(self.w.shape)}, input {a}, acc {self.acc_dtype}"


def _set_child(root: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, attr = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, attr, new)


def build_runtime(plan: ExportPlan, meta: dict) -> nn.Module:
    """The float architecture with every planned layer replaced by a RefLayer."""
    cfg = meta.get("mbq.config") or {}
    arch = float_arch(cfg.get("model") or {})
    replaced = set(plan.layers) | set(plan.folded_bn)
    missing, unexpected = arch.load_state_dict(plan.tensors, strict=False)
    bad = [k for k in missing if k.rpartition(".")[0] not in replaced]
    if bad or unexpected:
        raise MbqError(f"packed file does not fit architecture {meta['mbq.arch']} "
                       f"(missing {bad[:3]}, unexpected {list(unexpected)[:3]})")
    for name, p in plan.layers.items():
        _set_child(arch, name, RefLayer(p))
    for name in plan.folded_bn:
        _set_child(arch, name, nn.Identity())
    return arch.eval()


def load_packed_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """(runtime model on ``device``, metadata) of a packed file."""
    from .packed import read_packed

    plan, meta = read_packed(path)
    return build_runtime(plan, meta).to(device), meta
