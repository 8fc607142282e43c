"""BatchNorm folding: which convs feed a BatchNorm directly, and the fold arithmetic.

The graph comes from ``torch.fx`` on the float architecture (same module names as the
quantized model); a model fx cannot trace simply keeps its BatchNorms.
"""
from __future__ import annotations

from collections import Counter

import torch
from torch import nn


def trace(arch: nn.Module):
    """fx GraphModule of the float architecture, or None if it cannot be traced."""
    import torch.fx as fx

    try:
        return fx.symbolic_trace(arch)
    except Exception:  # data-dependent control flow: no folding, no ONNX graph
        return None


def conv_bn_pairs(gm) -> dict[str, str]:
    """{conv name: bn name} where the conv's only consumer is a BatchNorm2d.

    Each module must be called exactly once (a shared module cannot be rewritten).
    """
    if gm is None:
        return {}
    calls = Counter(n.target for n in gm.graph.nodes if n.op == "call_module")
    pairs = {}
    for node in gm.graph.nodes:
        if node.op != "call_module" or not isinstance(gm.get_submodule(node.target), nn.Conv2d):
            continue
        users = list(node.users)
        if len(users) != 1 or users[0].op != "call_module":
            continue
        bn = users[0]
        if (isinstance(gm.get_submodule(bn.target), nn.BatchNorm2d) and bn.args[:1] == (node,)
                and calls[node.target] == 1 and calls[bn.target] == 1):
            pairs[node.target] = bn.target
    return pairs


def bn_affine(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(k, b) with bn(y) = k*y + b per channel in eval mode; None without running stats."""
    if bn.running_mean is None or bn.running_var is None:
        return None
    k = 1.0 / torch.sqrt(bn.running_var.double() + bn.eps)
    if bn.weight is not None:
        k = k * bn.weight.detach().double()
    b = -k * bn.running_mean.double()
    if bn.bias is not None:
        b = b + bn.bias.detach().double()
    return k, b


def fold_bias(bias: torch.Tensor | None, k: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Bias of the conv after folding a BN (k, b) into it."""
    return b if bias is None else k * bias.double() + b
