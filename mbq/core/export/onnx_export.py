"""ONNX export of a plan, and an onnxruntime session that runs it.

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

import operator
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as TF

from ..errors import MbqError, RunFailed
from ..quant.functional import pack_bits
from ._deps import require
from .plan import ExportPlan, LayerPlan

IR_VERSION = 10  # opset 21's IR; onnxruntime reads it


def _container(bits: int, signed: bool):
    from onnx import TensorProto

    if bits == 4:
        return (TensorProto.INT4 if signed else TensorProto.UINT4), (-8, 7) if signed else (0, 15)
    return (TensorProto.INT8 if signed else TensorProto.UINT8), (-128, 127) if signed else (0, 255)


class _Graph:
    def __init__(self, arch_name: str):
        from onnx import helper, numpy_helper

        self.h, self.nh, self.arch = helper, numpy_helper, arch_name
        self.nodes, self.inits, self._names = [], [], set()

    def _fresh(self, hint: str) -> str:
        name, i = hint, 1
        while name in self._names:
            name, i = f"{hint}_{i}", i + 1
        self._names.add(name)
        return name

    def const(self, hint: str, array) -> str:
        name = self._fresh(hint)
        self.inits.append(self.nh.from_array(np.ascontiguousarray(array), name))
        return name

    def codes(self, hint: str, q: torch.Tensor, bits: int, signed: bool) -> str:
        dtype, _ = _container(bits, signed)
        name = self._fresh(hint)
        if bits == 4:  # ONNX packs 4-bit elements two per byte, low nibble first: pack_bits' order
            raw = pack_bits(q.reshape(-1), 4).numpy().tobytes()
            self.inits.append(self.h.make_tensor(name, dtype, list(q.shape), raw, raw=True))
        else:
            arr = q.numpy().astype(np.int8 if signed else np.uint8)
            self.inits.append(self.nh.from_array(arr, name))
        return name

    def op(self, op_type: str, inputs: list[str], hint: str, **attrs) -> str:
        out = self._fresh(hint)
        self.nodes.append(self.h.make_node(op_type, inputs, [out], name=out, **attrs))
        return out

    def unsupported(self, what: str):
        raise MbqError(f"ONNX export does not support {what} (architecture {self.arch}); "
                       "use --format packed")


# --- quantized / rewritten layers -------------------------------------------------

def _quant_input(g: _Graph, x: str, p: LayerPlan) -> str:
    a = p.act
    signed = a.lo < 0
    _, (tlo, thi) = _container(a.bits, signed)
    s = g.const(f"{p.name}.input.scale", np.array(a.scale, np.float32))
    z = g.codes(f"{p.name}.input.zero_point", torch.zeros((), dtype=torch.long), a.bits, signed)
    if (a.lo, a.hi) != (tlo, thi):
        lo = g.const(f"{p.name}.input.min", np.array(a.lo * a.scale, np.float32))
        hi = g.const(f"{p.name}.input.max", np.array(a.hi * a.scale, np.float32))
        x = g.op("Clip", [x, lo, hi], f"{p.name}.input.clip")
    q = g.op("QuantizeLinear", [x, s, z], f"{p.name}.input.q")
    return g.op("DequantizeLinear", [q, s, z], f"{p.name}.input.dq")


def _weight(g: _Graph, p: LayerPlan) -> str:
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
    _, (lo, hi) = _container(c.bits, c.signed)
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


def _conv_attrs(p: LayerPlan, name: str, g: _Graph) -> dict:
    c = p.conv
    if isinstance(c["padding"], str):
        g.unsupported(f"string padding '{c['padding']}' in {name}")
    ph, pw = c["padding"]
    return {"kernel_shape": p.shape[2:], "strides": c["stride"], "pads": [ph, pw, ph, pw],
            "dilations": c["dilation"], "group": c["groups"]}


def _layer(g: _Graph, x: str, p: LayerPlan) -> str:
    if p.act is not None:
        x = _quant_input(g, x, p)
    w = _weight(g, p)
    b = None if p.bias is None else g.const(f"{p.name}.bias", p.bias.float().numpy())
    if p.kind == "conv2d":
        return g.op("Conv", [x, w] + ([b] if b else []), p.name, **_conv_attrs(p, p.name, g))
    y = g.op("MatMul", [x, w], f"{p.name}.matmul")
    return g.op("Add", [y, b], p.name) if b else y


def _float_layer(g: _Graph, x: str, name: str, m: nn.Module, tensors: dict) -> str:
    """A conv/linear the plan did not rewrite: its float tensors from the plan."""
    p = LayerPlan(name, "conv2d" if isinstance(m, nn.Conv2d) else "linear", list(m.weight.shape),
                  32, 32, weight=tensors[f"{name}.weight"].double(),
                  bias=tensors[f"{name}.bias"].double() if f"{name}.bias" in tensors else None,
                  conv={"stride": list(m.stride), "padding": m.padding if isinstance(m.padding, str)
                        else list(m.padding), "dilation": list(m.dilation), "groups": m.groups}
                  if isinstance(m, nn.Conv2d) else None)
    return _layer(g, x, p)


# --- everything else -------------------------------------------------------------------

def _pair(v) -> list[int]:
    return list(v) if isinstance(v, (tuple, list)) else [int(v), int(v)]


def _pool(g: _Graph, x: str, kind: str, hint: str, kernel, stride, padding, dilation=1,
          ceil_mode=False, count_include_pad=True) -> str:
    k, s = _pair(kernel), _pair(stride if stride not in (None, []) else kernel)
    ph, pw = _pair(padding)
    attrs = {"kernel_shape": k, "strides": s, "pads": [ph, pw, ph, pw], "ceil_mode": int(ceil_mode)}
    if kind == "MaxPool":
        attrs["dilations"] = _pair(dilation)
    else:
        attrs["count_include_pad"] = int(count_include_pad)
    return g.op(kind, [x], hint, **attrs)


def _global_pool(g: _Graph, x: str, size, hint: str) -> str:
    if _pair(size) != [1, 1]:
        g.unsupported(f"adaptive average pooling to {size}")
    return g.op("GlobalAveragePool", [x], hint)


def _flatten(g: _Graph, x: str, start: int, end: int, hint: str) -> str:
    if (start, end) != (1, -1):
        g.unsupported(f"flatten({start}, {end})")
    return g.op("Flatten", [x], hint, axis=1)


def _clip(g: _Graph, x: str, lo: float, hi: float, hint: str) -> str:
    return g.op("Clip", [x, g.const(f"{hint}.min", np.array(lo, np.float32)),
                         g.const(f"{hint}.max", np.array(hi, np.float32))], hint)


def _bn(g: _Graph, x: str, name: str, m: nn.BatchNorm2d, t: dict) -> str:
    c = m.num_features
    get = lambda k, d: (t[f"{name}.{k}"] if f"{name}.{k}" in t else d).float().numpy()  # noqa: E731
    if f"{name}.running_mean" not in t:
        g.unsupported(f"BatchNorm {name} without running statistics")
    ins = [g.const(f"{name}.weight", get("weight", torch.ones(c))),
           g.const(f"{name}.bias", get("bias", torch.zeros(c))),
           g.const(f"{name}.running_mean", get("running_mean", None)),
           g.const(f"{name}.running_var", get("running_var", None))]
    return g.op("BatchNormalization", [x] + ins, name, epsilon=float(m.eps))


def _module(g: _Graph, x: str, name: str, m: nn.Module, plan: ExportPlan) -> str:
    if name in plan.layers:
        return _layer(g, x, plan.layers[name])
    if name in plan.folded_bn or isinstance(m, (nn.Identity, nn.Dropout)):
        return x
    if isinstance(m, (nn.Conv2d, nn.Linear)):
        return _float_layer(g, x, name, m, plan.tensors)
    if isinstance(m, nn.BatchNorm2d):
        return _bn(g, x, name, m, plan.tensors)
    if isinstance(m, nn.ReLU):
        return g.op("Relu", [x], name)
    if isinstance(m, nn.Hardtanh):  # ReLU6 too
        return _clip(g, x, m.min_val, m.max_val, name)
    if isinstance(m, nn.Hardswish):
        return g.op("HardSwish", [x], name)
    if isinstance(m, nn.Hardsigmoid):
        return g.op("HardSigmoid", [x], name, alpha=1 / 6, beta=0.5)
    if isinstance(m, nn.Sigmoid):
        return g.op("Sigmoid", [x], name)
    if isinstance(m, nn.SiLU):
        return g.op("Mul", [x, g.op("Sigmoid", [x], f"{name}.sigmoid")], name)
    if isinstance(m, nn.MaxPool2d):
        return _pool(g, x, "MaxPool", name, m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode)
    if isinstance(m, nn.AvgPool2d):
        if m.divisor_override:
            g.unsupported(f"AvgPool2d divisor_override in {name}")
        return _pool(g, x, "AveragePool", name, m.kernel_size, m.stride, m.padding,
                     ceil_mode=m.ceil_mode, count_include_pad=m.count_include_pad)
    if isinstance(m, nn.AdaptiveAvgPool2d):
        return _global_pool(g, x, m.output_size, name)
    if isinstance(m, nn.Flatten):
        return _flatten(g, x, m.start_dim, m.end_dim, name)
    g.unsupported(f"module {type(m).__name__} ({name})")


def _bind(node, names: list[str], defaults: dict) -> dict:
    v = dict(defaults)
    v.update(zip(names, node.args))
    v.update(node.kwargs)
    return v


_UNARY = {TF.relu: "Relu", torch.relu: "Relu", TF.hardswish: "HardSwish", torch.sigmoid: "Sigmoid",
          TF.sigmoid: "Sigmoid"}
_BINARY = {operator.add: "Add", torch.add: "Add", operator.mul: "Mul", torch.mul: "Mul"}


def _function(g: _Graph, node, env: dict) -> str:
    f, hint = node.target, node.name
    arg = lambda a: env[a.name] if hasattr(a, "name") and a.name in env else a  # noqa: E731
    if f in _UNARY:
        return g.op(_UNARY[f], [arg(node.args[0])], hint)
    if f in _BINARY:
        a, b = (arg(v) for v in node.args[:2])
        if not (isinstance(a, str) and isinstance(b, str)) or node.kwargs.get("alpha", 1) != 1:
            g.unsupported(f"{node.target} with a constant operand")
        return g.op(_BINARY[f], [a, b], hint)
    if f in (TF.relu6, TF.hardtanh):
        v = _bind(node, ["input", "min_val", "max_val"], {"min_val": -1.0, "max_val": 1.0})
        lo, hi = (0.0, 6.0) if f is TF.relu6 else (v["min_val"], v["max_val"])
        return _clip(g, arg(node.args[0]), lo, hi, hint)
    if f is TF.max_pool2d:
        v = _bind(node, ["input", "kernel_size", "stride", "padding", "dilation", "ceil_mode"],
                  {"stride": None, "padding": 0, "dilation": 1, "ceil_mode": False})
        return _pool(g, arg(v["input"]), "MaxPool", hint, v["kernel_size"], v["stride"], v["padding"],
                     v["dilation"], v["ceil_mode"])
    if f is TF.adaptive_avg_pool2d:
        v = _bind(node, ["input", "output_size"], {})
        return _global_pool(g, arg(v["input"]), v["output_size"], hint)
    if f is torch.flatten:
        v = _bind(node, ["input", "start_dim", "end_dim"], {"start_dim": 0, "end_dim": -1})
        return _flatten(g, arg(v["input"]), v["start_dim"], v["end_dim"], hint)
    if f in (TF.dropout,):
        return arg(node.args[0])
    g.unsupported(f"function {getattr(f, '__name__', f)}")


def _method(g: _Graph, node, env: dict) -> str:
    x = env[node.args[0].name]
    if node.target == "flatten":
        v = _bind(node, ["self", "start_dim", "end_dim"], {"start_dim": 0, "end_dim": -1})
        return _flatten(g, x, v["start_dim"], v["end_dim"], node.name)
    if node.target in ("relu", "relu_"):
        return g.op("Relu", [x], node.name)
    if node.target == "sigmoid":
        return g.op("Sigmoid", [x], node.name)
    g.unsupported(f"tensor method .{node.target}()")


def build_onnx(plan: ExportPlan, arch: nn.Module, gm, meta: dict, opset: int = 21):
    """The ONNX ModelProto of ``plan`` over the fx graph ``gm`` of ``arch``; checked."""
    onnx = require("onnx", "ONNX export")
    from ..checkpoint import encode_metadata

    name = meta.get("mbq.arch", type(arch).__name__)
    g = _Graph(name)
    if gm is None:
        g.unsupported("a model torch.fx cannot trace")
    if opset < 21:
        raise MbqError(f"--opset {opset}: INT4/UINT4 QuantizeLinear needs opset 21 or newer")
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
            env[node.name] = _function(g, node, env)
        elif node.op == "call_method":
            env[node.name] = _method(g, node, env)
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
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", opset)], producer_name="mbq",
                         ir_version=IR_VERSION)
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


# --- running it ---------------------------------------------------------------------------

class OrtModel(nn.Module):
    """An onnxruntime session behind the nn.Module interface evaluate()/predict() use."""

    def __init__(self, path: str | Path, threads: int | None = None):
        super().__init__()
        ort = require("onnxruntime", "running an ONNX model")
        opts = ort.SessionOptions()
        # keep Q/DQ as written: onnxruntime's QDQ rewrites move 4-bit Q/DQ across MaxPool and
        # then reject their own graph (MaxPool has no INT4/UINT4 kernel)
        opts.add_session_config_entry("session.disable_quant_qdq", "1")
        if threads:
            opts.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as e:
            raise MbqError(f"{path}: onnxruntime cannot load it ({str(e).splitlines()[0][:200]})") from None
        self.input_name = self.session.get_inputs()[0].name

    def metadata(self) -> dict[str, str]:
        return dict(self.session.get_modelmeta().custom_metadata_map)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.session.run(None, {self.input_name: x.detach().float().cpu().numpy()})[0]
        return torch.from_numpy(out).to(x.device)
