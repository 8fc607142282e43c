"""ONNX export of a plan: a QuantizeLinear/DequantizeLinear graph, checked.

The graph follows the fx graph of the float architecture.  Each quantized layer becomes

    x -> [Clip] -> QuantizeLinear -> DequantizeLinear -> Conv / MatMul(+Add)
    codes -> DequantizeLinear(scale[C], zero_point) [-> Add(offset[C])] -^

with 4-bit codes in INT4/UINT4 tensors (opset 21) and other widths in INT8/UINT8
containers plus a Clip to the layer's range (activations; constant weight codes are in
range by construction).  A zero point that is not an integer (DoReFa's (2^b-1)/2, WBC)
becomes a per-channel Add after DequantizeLinear.  Folded BatchNorms are gone; the
rest maps op by op (a model with an op outside the table is refused with its name).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import MbqError, RunFailed
from ._deps import require
from .onnx_graph import (Graph, batch_norm, clip, container, flatten, function_node, global_pool,
                         method_node, pool)
from .plan import ExportPlan, LayerPlan

IR_VERSION = 10  # opset 21's IR (newer opsets get the IR they need)
MIN_OPSET = 21   # INT4/UINT4 QuantizeLinear/DequantizeLinear


def check_opset(opset: int) -> None:
    onnx = require("onnx", "ONNX export")
    top = onnx.defs.onnx_opset_version()
    if not MIN_OPSET <= opset <= top:
        raise MbqError(f"--opset {opset}: choose {MIN_OPSET}..{top} (INT4/UINT4 Q/DQ need "
                       f"{MIN_OPSET}; this onnx knows up to {top})")


# --- quantized / rewritten layers -------------------------------------------------

def _quant_input(g: Graph, x: str, p: LayerPlan) -> str:
    a = p.act
    signed = a.lo < 0
    _, (tlo, thi) = container(a.bits, signed)
    s = g.const(f"{p.name}.input.scale", np.array(a.scale, np.float32))
    z = g.codes(f"{p.name}.input.zero_point", torch.zeros((), dtype=torch.long), a.bits, signed)
    if (a.lo, a.hi) != (tlo, thi):
        lo = g.const(f"{p.name}.input.min", np.array(a.lo * a.scale, np.float32))
        hi = g.const(f"{p.name}.input.max", np.array(a.hi * a.scale, np.float32))
        x = g.op("Clip", [x, lo, hi], f"{p.name}.input.clip")
    q = g.op("QuantizeLinear", [x, s, z], f"{p.name}.input.q")
    return g.op("DequantizeLinear", [q, s, z], f"{p.name}.input.dq")


def _weight(g: Graph, p: LayerPlan) -> str:
    """Float weight as the layer's op consumes it: [C, ...] for conv, [in, out] for MatMul."""
    linear = p.kind == "linear"
    if p.codes is None:
        w = p.weight.float().numpy()
        return g.const(f"{p.name}.weight", w.T if linear else w)
    c = p.codes
    per_channel = c.scale.numel() > 1 or c.zero_point.numel() > 1
    shape = [p.shape[0]] if per_channel else []
    scale = c.scale.expand(p.shape[0]) if per_channel else c.scale.reshape(())
    zero = c.zero_point.expand(p.shape[0]) if per_channel else c.zero_point.reshape(())
    _, (lo, hi) = container(c.bits, c.signed)
    integer_zero = bool((zero == zero.round()).all()) and lo <= zero.min() and zero.max() <= hi
    qn = g.codes(f"{p.name}.weight.codes", c.codes.t().contiguous() if linear else c.codes,
                 c.bits, c.signed)
    s = g.const(f"{p.name}.weight.scale", scale.float().numpy())
    zp = zero.round().long() if integer_zero else torch.zeros(shape, dtype=torch.long)
    z = g.codes(f"{p.name}.weight.zero_point", zp.reshape(shape), c.bits, c.signed)
    w = g.op("DequantizeLinear", [qn, s, z], f"{p.name}.weight.dq", axis=1 if linear else 0)
    if integer_zero:
        return w
    off = (-scale * zero).float().numpy()  # w = scale*q - scale*zero
    if per_channel:
        off = off.reshape(1, -1) if linear else off.reshape(-1, *([1] * (len(p.shape) - 1)))
    return g.op("Add", [w, g.const(f"{p.name}.weight.offset", off)], f"{p.name}.weight")


def _conv_attrs(p: LayerPlan, name: str, g: Graph) -> dict:
    c = p.conv
    if isinstance(c["padding"], str):
        g.unsupported(f"string padding '{c['padding']}' in {name}")
    ph, pw = c["padding"]
    return {"kernel_shape": p.shape[2:], "strides": c["stride"], "pads": [ph, pw, ph, pw],
            "dilations": c["dilation"], "group": c["groups"]}


def _layer(g: Graph, x: str, p: LayerPlan) -> str:
    if p.act is not None and p.act.bits <= 8:
        x = _quant_input(g, x, p)
    elif p.act is not None:  # float input, clipped (clamp_fp at 32 bits)
        x = clip(g, x, p.act.lo * p.act.scale, p.act.hi * p.act.scale, f"{p.name}.input.clip")
    w = _weight(g, p)
    b = None if p.bias is None else g.const(f"{p.name}.bias", p.bias.float().numpy())
    if p.kind == "conv2d":
        return g.op("Conv", [x, w] + ([b] if b else []), p.name, **_conv_attrs(p, p.name, g))
    y = g.op("MatMul", [x, w], f"{p.name}.matmul")
    return g.op("Add", [y, b], p.name) if b else y


def _float_layer(g: Graph, x: str, name: str, m: nn.Module, tensors: dict) -> str:
    """A conv/linear the plan did not rewrite: its float tensors from the plan."""
    p = LayerPlan(name, "conv2d" if isinstance(m, nn.Conv2d) else "linear", list(m.weight.shape),
                  32, 32, weight=tensors[f"{name}.weight"].double(),
                  bias=tensors[f"{name}.bias"].double() if f"{name}.bias" in tensors else None,
                  conv={"stride": list(m.stride), "padding": m.padding if isinstance(m.padding, str)
                        else list(m.padding), "dilation": list(m.dilation), "groups": m.groups}
                  if isinstance(m, nn.Conv2d) else None)
    return _layer(g, x, p)


def _module(g: Graph, x: str, name: str, m: nn.Module, plan: ExportPlan) -> str:
    if name in plan.layers:
        return _layer(g, x, plan.layers[name])
    if name in plan.folded_bn or isinstance(m, (nn.Identity, nn.Dropout)):
        return x
    if isinstance(m, (nn.Conv2d, nn.Linear)):
        return _float_layer(g, x, name, m, plan.tensors)
    if isinstance(m, nn.BatchNorm2d):
        return batch_norm(g, x, name, m, plan.tensors)
    if isinstance(m, nn.ReLU):
        return g.op("Relu", [x], name)
    if isinstance(m, nn.Hardtanh):  # ReLU6 too
        return clip(g, x, m.min_val, m.max_val, name)
    if isinstance(m, nn.Hardswish):
        return g.op("HardSwish", [x], name)
    if isinstance(m, nn.Hardsigmoid):
        return g.op("HardSigmoid", [x], name, alpha=1 / 6, beta=0.5)
    if isinstance(m, nn.Sigmoid):
        return g.op("Sigmoid", [x], name)
    if isinstance(m, nn.SiLU):
        return g.op("Mul", [x, g.op("Sigmoid", [x], f"{name}.sigmoid")], name)
    if isinstance(m, nn.MaxPool2d):
        return pool(g, x, "MaxPool", name, m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode)
    if isinstance(m, nn.AvgPool2d):
        if m.divisor_override:
            g.unsupported(f"AvgPool2d divisor_override in {name}")
        return pool(g, x, "AveragePool", name, m.kernel_size, m.stride, m.padding,
                     ceil_mode=m.ceil_mode, count_include_pad=m.count_include_pad)
    if isinstance(m, nn.AdaptiveAvgPool2d):
        return global_pool(g, x, m.output_size, name)
    if isinstance(m, nn.Flatten):
        return flatten(g, x, m.start_dim, m.end_dim, name)
    g.unsupported(f"module {type(m).__name__} ({name})")


def build_onnx(plan: ExportPlan, arch: nn.Module, gm, meta: dict, opset: int = 21):
    """The ONNX ModelProto of ``plan`` over the fx graph ``gm`` of ``arch``; checked."""
    onnx = require("onnx", "ONNX export")
    from ..checkpoint import encode_metadata

    name = meta.get("mbq.arch", type(arch).__name__)
    g = Graph(name)
    if gm is None:
        g.unsupported("a model torch.fx cannot trace")
    env, output = {}, None
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            if env:
                g.unsupported("more than one input")
            env[node.name] = "input"
            g._names.add("input")
        elif node.op == "call_module":
            env[node.name] = _module(g, env[node.args[0].name], node.target,
                                     gm.get_submodule(node.target), plan)
        elif node.op == "call_function":
            env[node.name] = function_node(g, node, env)
        elif node.op == "call_method":
            env[node.name] = method_node(g, node, env)
        elif node.op == "output":
            if not hasattr(node.args[0], "name"):
                g.unsupported("a model with several outputs")
            output = env[node.args[0].name]
        else:
            g.unsupported(f"fx node {node.op} {node.target}")
    g.nodes.append(g.h.make_node("Identity", [output], ["logits"], name="logits"))
    h = g.h
    c, s, k = (int(meta["mbq.in_channels"]), int(meta["mbq.image_size"]), int(meta["mbq.num_classes"]))
    graph = h.make_graph(g.nodes, f"mbq_{name}",
                         [h.make_tensor_value_info("input", onnx.TensorProto.FLOAT, ["batch", c, s, s])],
                         [h.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, ["batch", k])],
                         g.inits)
    ops = [h.make_opsetid("", opset)]
    model = h.make_model(graph, opset_imports=ops, producer_name="mbq",
                         ir_version=max(IR_VERSION, h.find_min_ir_version_for(ops)))
    h.set_model_props(model, encode_metadata(meta))
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as e:
        raise RunFailed(f"the exported ONNX graph fails onnx.checker: {str(e).splitlines()[0]}") from None
    return model


def write_onnx(plan: ExportPlan, arch: nn.Module, gm, meta: dict, setting: dict, path: str | Path,
               opset: int = 21) -> None:
    meta = dict(meta, **{"mbq.format": "onnx", "mbq.bit_scheme": plan.scheme})
    model = build_onnx(plan, arch, gm, meta, opset)
    Path(path).write_bytes(model.SerializeToString())
