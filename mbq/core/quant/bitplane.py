"""Bit-plane weights for the BSQ baseline (Yang et al., ICLR 2021).

A layer's n-bit weight is stored as n trainable tensors of the weight's
shape: one sign plane and n−1 magnitude planes (sign-magnitude, so n counts
the sign bit as MSQ's two's-complement widths do):

    w = Δ · sign(S) · clamp(round(Σ_b P_b 2^b), 0, 2^(n−1) − 1)      (STE)

Planes are continuous in [0, 2] while training (BSQ's carry range) and are
re-binarised to exact bits periodically, when all-zero MSB/LSB planes are
dropped. The planes tensor keeps its initial size (dropped planes are held
at zero) so the optimizer never sees a parameter change shape.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

from . import functional as F

PLANE_MAX = 2.0  # BSQ lets a plane carry into the next one while training


class OnGrid(nn.Module):
    """Weight quantizer of a bit-plane layer: its weight is already on the grid."""

    supports_1bit = False

    def forward(self, w: torch.Tensor, bits: int) -> torch.Tensor:
        return w


class BitPlanes(nn.Module):
    """Parametrization ``(planes, sign) -> weight`` registered on ``layer.weight``."""

    def __init__(self, bits: int):
        super().__init__()
        if not 2 <= bits <= 8:
            raise ValueError(f"bit planes need 2..8 bits, got {bits}")
        self.register_buffer("step", torch.tensor(1.0))
        self.register_buffer("magnitude_planes", torch.tensor(bits - 1, dtype=torch.int64))
        self._m = self._size = bits - 1
        self.register_load_state_dict_post_hook(_refresh)

    @property
    def bits(self) -> int:
        return self._m + 1

    def forward(self, planes: torch.Tensor, sign: torch.Tensor) -> torch.Tensor:
        m = self._m
        # gradients scaled by 1/(Δ·2^(m−1))²: the weight then moves under SGD about as a
        # float weight would, whatever Δ is (raw plane gradients carry a factor Δ·2^b)
        g = 1.0 / (self.step.detach() * (1 << (m - 1))) ** 2
        planes, sign = _grad_scale(planes, g), _grad_scale(sign, g)
        powers = (2.0 ** torch.arange(m, device=planes.device, dtype=planes.dtype)).view(-1, *[1] * sign.dim())
        mag = torch.clamp(F.round_ste((planes[:m] * powers).sum(0)), 0, (1 << m) - 1)
        return self.step * F.sign_ste(sign) * mag

    def right_inverse(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact planes of ``w`` on the grid with Δ = max|w| / (2^(n−1) − 1)."""
        m = int(self.magnitude_planes)
        with torch.no_grad():
            self.step.fill_(max(w.abs().max().item(), 1e-8) / ((1 << m) - 1))
            q = torch.clamp(torch.round(w.abs() / self.step), 0, (1 << m) - 1).to(torch.int64)
            sign = torch.where(w >= 0, 1.0, -1.0).to(w.dtype)
        return _planes_of(q, m, self._size, w.dtype), sign

    @torch.no_grad()
    def codes(self, planes: torch.Tensor) -> torch.Tensor:
        """Integer magnitudes the planes encode now (int64)."""
        m = self._m
        powers = (2.0 ** torch.arange(m, device=planes.device, dtype=planes.dtype)).view(-1, *[1] * (planes.dim() - 1))
        mag = (planes[:m].clamp(0, PLANE_MAX) * powers).sum(0)
        return torch.clamp(torch.round(mag), 0, (1 << m) - 1).to(torch.int64)


def _grad_scale(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """``x`` in the forward pass, gradient times ``g``."""
    return (x - x * g).detach() + x * g


def _refresh(module, _incompatible) -> None:
    module._m = int(module.magnitude_planes)


def _planes_of(q: torch.Tensor, m: int, size: int, dtype) -> torch.Tensor:
    shifts = torch.arange(size, device=q.device).view(-1, *[1] * q.dim())
    planes = ((q.unsqueeze(0) >> shifts) & 1).to(dtype)
    planes[m:] = 0
    return planes


def to_bit_planes(layer: nn.Module, bits: int) -> nn.Module:
    """Turn a QConv2d/QLinear's weight into ``bits`` trainable planes, in place."""
    layer.weight_quant = OnGrid()
    parametrize.register_parametrization(layer, "weight", BitPlanes(bits))
    layer.set_precision(bits)
    return layer


def plane_params(layer: nn.Module) -> tuple[nn.Parameter, nn.Parameter, BitPlanes]:
    """(planes, sign, parametrization) of a bit-plane layer."""
    p = layer.parametrizations.weight
    return p.original0, p.original1, p[0]


def is_bit_plane(layer: nn.Module) -> bool:
    return parametrize.is_parametrized(layer, "weight") and isinstance(
        layer.parametrizations.weight[0], BitPlanes)


@torch.no_grad()
def clamp_planes(layer: nn.Module) -> None:
    """Keep latents in range after an optimizer step: planes in [0, 2], sign in [−1, 1]."""
    planes, sign, _ = plane_params(layer)
    planes.clamp_(0, PLANE_MAX)
    sign.clamp_(-1, 1)


def group_lasso(layer: nn.Module) -> torch.Tensor:
    """Σ_b ||P_b||₂ over the layer's active magnitude planes."""
    planes, _, bp = plane_params(layer)
    return (planes[: bp._m].flatten(1).pow(2).sum(1) + 1e-12).sqrt().sum()


@torch.no_grad()
def rebinarize(layer: nn.Module, min_bits: int = 2) -> tuple[int, int]:
    """Round the planes to exact bits; drop all-zero LSB planes (Δ doubles) and
    all-zero MSB planes, never below ``min_bits``. Returns (bits before, after);
    the weight the layer computes is unchanged."""
    planes, sign, bp = plane_params(layer)
    before = m = bp._m
    q = bp.codes(planes)
    floor = max(min_bits - 1, 1)
    while m > floor and bool((q % 2 == 0).all()):
        q = q // 2
        bp.step.mul_(2)
        m -= 1
    while m > floor and bool((q < (1 << (m - 1))).all()):
        m -= 1
    planes.copy_(_planes_of(q, m, planes.shape[0], planes.dtype))
    sign.copy_(torch.where(sign >= 0, 1.0, -1.0).to(sign.dtype))
    bp.magnitude_planes.fill_(m)
    bp._m = m
    layer.set_precision(m + 1)
    return before + 1, m + 1
