"""Turn a float model into a fake-quantized one and switch its precision.

``quantize_model`` swaps every nn.Conv2d / nn.Linear for QConv2d / QLinear
(same weights); the first conv and the last linear are *pinned* at
``first_last_bits`` and ignored by ``set_bits``.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from . import functional as F
from .modules import BN_SWITCHES, QUANT_LAYERS, QConv2d, QLinear, SwitchableBatchNorm2d, WidthStatsBatchNorm2d


def _set_child(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, attr, new)


def _first_last(model: nn.Module) -> tuple[str | None, str | None]:
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    return (convs[0] if convs else None), (linears[-1] if linears else None)


def _qlayer_from(m: nn.Module, qkwargs: dict) -> nn.Module:
    if isinstance(m, nn.Conv2d):
        q = QConv2d(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding, m.dilation,
                    m.groups, m.bias is not None, m.padding_mode, qkwargs=qkwargs,
                    device=m.weight.device, dtype=m.weight.dtype)
    else:
        q = QLinear(m.in_features, m.out_features, m.bias is not None, qkwargs=qkwargs,
                    device=m.weight.device, dtype=m.weight.dtype)
    with torch.no_grad():
        q.weight.copy_(m.weight)
        if m.bias is not None:
            q.bias.copy_(m.bias)
    return q


@torch.no_grad()
def signed_input_layers(model: nn.Module, input_shape: tuple[int, ...]) -> set[str]:
    """Names of the conv/linear layers whose input can be negative, found by one eval-mode
    pass of a random batch (no state changes): a ReLU's output never is, a linear
    bottleneck, residual sum or LayerNorm's output is, whatever the weights."""
    seen: set[str] = set()
    hooks = [m.register_forward_hook(lambda _m, inp, _out, n=n: seen.add(n) if bool((inp[0] < 0).any()) else None)
             for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    ref = next(model.parameters())
    x = torch.randn((2, *input_shape), generator=torch.Generator().manual_seed(0)).to(ref.device, ref.dtype)
    was_training = model.training
    try:
        model.eval()
        model(x)
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return seen


def redraw_zero_weight(layer: nn.Module) -> bool:
    """Redraw an all-zero weight (LeCun normal); True when it did.

    For a model about to be trained: some classifiers start their head at zero (torchvision's
    ViT). Quantized, such a layer is a fixed point: DoReFa scales by mean|w| = 0 and divides by
    max|tanh w| = 0, so its output is NaN (vit_tiny with ``--first-last-bits 8``: NaN at step 0).
    Used as an embedding it is one too. ``quantize_model`` itself keeps every weight as it is.
    A weight that is not all zero is left untouched, and so is the random stream.
    """
    w = getattr(layer, "weight", None)
    if w is None or w.detach().any():
        return False
    fan_in = w[0].numel()
    with torch.no_grad():
        nn.init.trunc_normal_(w, std=math.sqrt(1 / fan_in))
    return True


def quantize_model(model: nn.Module, qconfig, input_shape: tuple[int, ...] | None = None) -> nn.Module:
    """Swap conv/linear layers for fake-quantized ones, in place; returns ``model``.

    ``qconfig`` is a :class:`mbq.core.config.QuantConfig` (or anything with
    the same attributes). With ``input_shape`` (C, H, W) and ``qconfig.signed_inputs``,
    layers whose input can be negative get a signed activation quantizer; without it
    every input is taken to be a ReLU's (unsigned).
    """
    first, last = _first_last(model)
    signed = (signed_input_layers(model, input_shape)
              if input_shape is not None and getattr(qconfig, "signed_inputs", False) else set())
    base = dict(weight_quant=qconfig.weight, act_quant=qconfig.act, fp_path=qconfig.fp_path,
                wbc=qconfig.wbc, wbc_detach=qconfig.wbc_detach,
                wbc_per_channel=qconfig.wbc_per_channel, w_scale=getattr(qconfig, "w_scale", "tensor"))
    targets = [(n, m) for n, m in model.named_modules()
               if type(m) in (nn.Conv2d, nn.Linear)]
    for name, m in targets:
        pinned = name in (first, last)
        if pinned and F.is_fp(qconfig.first_last_bits):
            continue  # stays a plain float layer
        bits = qconfig.first_last_bits if pinned else qconfig.w_bits
        abits = qconfig.first_last_bits if pinned else qconfig.a_bits
        kw = dict(base, w_bits=bits, a_bits=abits, pinned=pinned)
        if pinned:
            kw["wbc"] = False  # fixed width: nothing to align across widths
        q = _qlayer_from(m, kw)
        q.act_quant.signed = name in signed
        _set_child(model, name, q)
    if qconfig.switchable_bn:
        for name, m in [(n, m) for n, m in model.named_modules() if type(m) is nn.BatchNorm2d]:
            sbn = SwitchableBatchNorm2d(m.num_features, list(qconfig.switchable_bn), eps=m.eps,
                                        momentum=m.momentum, affine=m.affine,
                                        track_running_stats=m.track_running_stats)
            for bn in sbn.bns.values():
                bn.load_state_dict(m.state_dict())
            _set_child(model, name, sbn.to(next(m.parameters(), torch.empty(0)).device))
    elif getattr(qconfig, "width_stats_bn", False):
        for name, m in [(n, m) for n, m in model.named_modules() if type(m) is nn.BatchNorm2d]:
            wbn = WidthStatsBatchNorm2d(m.num_features, eps=m.eps, momentum=m.momentum, affine=m.affine,
                                        device=m.running_mean.device)
            wbn.load_state_dict(m.state_dict(), strict=False)
            wbn.set_active(qconfig.w_bits)
            _set_child(model, name, wbn)
    return model


def quantized_layers(model: nn.Module, include_pinned: bool = True) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules()
            if isinstance(m, QUANT_LAYERS) and (include_pinned or not m.pinned)]


def weight_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Every conv/linear layer, quantized or float (for compression ratios)."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def set_bits(model: nn.Module, w: int, a: int | None = None) -> nn.Module:
    """Set every non-pinned quantized layer to ``w``-bit weights, ``a``-bit inputs.

    ``a=None`` keeps each layer's activation width. BNs with per-width state follow ``w``.
    """
    for _, m in quantized_layers(model, include_pinned=False):
        m.set_precision(w, a)
    for m in model.modules():
        if isinstance(m, BN_SWITCHES):
            m.set_active(w)
    return model


def get_bit_scheme(model: nn.Module) -> dict[str, dict[str, int]]:
    return {n: {"w": m.bits[0], "a": m.bits[1]} for n, m in quantized_layers(model)}


def set_bit_scheme(model: nn.Module, scheme: dict[str, dict[str, int]]) -> nn.Module:
    layers = dict(quantized_layers(model))
    unknown = sorted(set(scheme) - set(layers))
    if unknown:
        raise KeyError(f"bit scheme names layers the model does not have: {unknown[:3]}")
    for name, wa in scheme.items():
        layers[name].set_precision(wa.get("w"), wa.get("a"))
    return model


def compression_ratio(model: nn.Module, scheme: dict[str, dict[str, int]] | None = None) -> float:
    """C = 32·ΣN_l / Σ n_l·N_l over every conv/linear weight (float layers count 32)."""
    scheme = scheme if scheme is not None else get_bit_scheme(model)
    total = bits = 0
    for name, m in weight_layers(model):
        n = m.weight.numel()
        b = scheme[name]["w"] if name in scheme else F.FP_BITS
        total += n
        bits += n * min(b, F.FP_BITS)
    return F.FP_BITS * total / bits if bits else 1.0


def average_bits(model: nn.Module, scheme=None) -> float:
    return F.FP_BITS / compression_ratio(model, scheme)
