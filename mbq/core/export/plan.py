"""The deployable description of a fake-quantized model at its current precision.

A plan holds, per weight layer that export rewrites (every QConv2d/QLinear, and a float
conv that absorbs a BatchNorm), the integer weight codes or the float weight, the bias,
the input quantizer and the folded BN; every other tensor of the float architecture
(unfolded BNs, float layers, embeddings) is kept as is under its own name.  Both the
packed file and the ONNX graph are written from a plan.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ..errors import MbqError
from ..quant import FP_BITS, get_bit_scheme, quantized_layers, weight_layers
from ..quant.modules import SwitchableBatchNorm2d
from .codes import ActCodes, WeightCodes, act_codes_params, weight_codes
from .fold import bn_affine, conv_bn_pairs, fold_bias


@dataclass
class LayerPlan:
    name: str
    kind: str                          # "conv2d" | "linear"
    shape: list[int]
    w_bits: int                        # 32: float weight
    a_bits: int                        # 32: float input
    codes: WeightCodes | None = None
    weight: torch.Tensor | None = None  # float64, when codes is None
    bias: torch.Tensor | None = None    # float64
    act: ActCodes | None = None
    conv: dict | None = None           # stride, padding, dilation, groups
    folded_bn: str | None = None

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n


@dataclass
class ExportPlan:
    layers: dict[str, LayerPlan]
    tensors: dict[str, torch.Tensor]   # the rest of the float architecture's state
    scheme: dict[str, dict[str, int]]
    folded_bn: list[str] = field(default_factory=list)


def float_arch(model_cfg: dict) -> nn.Module:
    """The float architecture a checkpoint's ``mbq.config.model`` describes."""
    from ..config import ModelConfig
    from ..models import create_model

    mc = ModelConfig.model_validate(model_cfg)
    return create_model(mc.arch, num_classes=mc.num_classes, in_channels=mc.in_channels,
                        image_size=mc.image_size, **mc.kwargs)


def _conv_attrs(name: str, m: nn.Conv2d) -> dict:
    if m.padding_mode != "zeros":
        raise MbqError(f"layer {name}: padding_mode={m.padding_mode} is not supported by export")
    pad = m.padding if isinstance(m.padding, str) else list(m.padding)
    return {"stride": list(m.stride), "padding": pad, "dilation": list(m.dilation), "groups": m.groups}


def _layer(name: str, m: nn.Module, quantized: bool) -> LayerPlan:
    kind = "conv2d" if isinstance(m, nn.Conv2d) else "linear"
    w_bits, a_bits = m.bits if quantized else (FP_BITS, FP_BITS)
    p = LayerPlan(name, kind, list(m.weight.shape), w_bits, a_bits,
                  bias=None if m.bias is None else m.bias.detach().double().cpu(),
                  conv=_conv_attrs(name, m) if kind == "conv2d" else None)
    if quantized:
        p.codes = weight_codes(name, m)
        p.act = act_codes_params(name, m)
    if p.codes is None:
        w = m.quantized_weight() if quantized else m.weight  # quantized at 32 bits: the FP path
        p.weight = w.detach().double().cpu()
    else:
        c = p.codes
        p.codes = WeightCodes(c.codes.cpu(), c.bits, c.signed, c.scale.cpu(), c.zero_point.cpu(),
                              c.quantizer)
    return p


def _active_bn(model: nn.Module, name: str) -> nn.Module:
    m = model.get_submodule(name)
    return m.bns[str(m._active)] if isinstance(m, SwitchableBatchNorm2d) else m


def _fold(p: LayerPlan, bn: nn.Module) -> bool:
    affine = bn_affine(bn)
    if affine is None:
        return False
    k, b = (t.cpu() for t in affine)
    if p.codes is not None:
        p.codes = p.codes.channel_affine(k, torch.zeros_like(k))
    else:
        p.weight = p.weight * k.reshape(-1, *([1] * (p.weight.dim() - 1)))
    p.bias = fold_bias(p.bias, k, b)
    return True


def _state_source(model: nn.Module, key: str) -> torch.Tensor:
    owner, _, attr = key.rpartition(".")
    mod = model.get_submodule(owner) if owner else model
    if isinstance(mod, SwitchableBatchNorm2d):
        mod = mod.bns[str(mod._active)]  # the BN of the width being exported
    t = getattr(mod, attr, None)
    if not isinstance(t, torch.Tensor):
        raise MbqError(f"cannot export: the model has no tensor {key} that its architecture "
                       "expects (the method changed the architecture)")
    return t.detach().cpu()


@torch.no_grad()
def build_plan(model: nn.Module, arch: nn.Module, gm=None) -> ExportPlan:
    """Plan of ``model`` (fake-quantized, at its current setting) over float ``arch``.

    ``gm`` is ``fold.trace(arch)`` (None: keep every BatchNorm).
    """
    model.eval()
    layers = {n: _layer(n, m, True) for n, m in quantized_layers(model)}
    folded = []
    for conv, bn in conv_bn_pairs(gm).items():
        m = model.get_submodule(conv)
        if conv not in layers and type(m) is nn.Conv2d:
            layers[conv] = _layer(conv, m, False)
        if conv in layers and _fold(layers[conv], _active_bn(model, bn)):
            layers[conv].folded_bn = bn
            folded.append(bn)
    skip = set(layers) | set(folded)
    tensors = {k: _state_source(model, k) for k in arch.state_dict()
               if k.rpartition(".")[0] not in skip}
    return ExportPlan(layers, tensors, get_bit_scheme(model), folded)


def theoretical_bytes(plan: ExportPlan, arch: nn.Module) -> int:
    """Weight bytes the bit scheme implies: sum of numel * bits / 8 (float layers at 32)."""
    bits = 0
    for name, m in weight_layers(arch):
        b = plan.layers[name].w_bits if name in plan.layers else FP_BITS
        bits += m.weight.numel() * min(b, FP_BITS)
    return (bits + 7) // 8
