"""A small ONNX graph builder and the float ops of the fx graph (everything but the
conv/linear layers export rewrites): activations, pooling, flatten, add/mul, BatchNorm."""
from __future__ import annotations

import operator

import numpy as np
import torch
from torch import nn
from torch.nn import functional as TF

from ..errors import MbqError
from ..quant.functional import pack_bits


def container(bits: int, signed: bool):
    from onnx import TensorProto

    if bits == 4:
        return (TensorProto.INT4 if signed else TensorProto.UINT4), (-8, 7) if signed else (0, 15)
    return (TensorProto.INT8 if signed else TensorProto.UINT8), (-128, 127) if signed else (0, 255)


class Graph:
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
        dtype, _ = container(bits, signed)
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


def _pair(v) -> list[int]:
    return list(v) if isinstance(v, (tuple, list)) else [int(v), int(v)]


def pool(g: Graph, x: str, kind: str, hint: str, kernel, stride, padding, dilation=1,
          ceil_mode=False, count_include_pad=True) -> str:
    k, s = _pair(kernel), _pair(stride if stride not in (None, []) else kernel)
    ph, pw = _pair(padding)
    attrs = {"kernel_shape": k, "strides": s, "pads": [ph, pw, ph, pw], "ceil_mode": int(ceil_mode)}
    if kind == "MaxPool":
        attrs["dilations"] = _pair(dilation)
    else:
        attrs["count_include_pad"] = int(count_include_pad)
    return g.op(kind, [x], hint, **attrs)


def global_pool(g: Graph, x: str, size, hint: str) -> str:
    if _pair(size) != [1, 1]:
        g.unsupported(f"adaptive average pooling to {size}")
    return g.op("GlobalAveragePool", [x], hint)


def flatten(g: Graph, x: str, start: int, end: int, hint: str) -> str:
    if (start, end) != (1, -1):
        g.unsupported(f"flatten({start}, {end})")
    return g.op("Flatten", [x], hint, axis=1)


def clip(g: Graph, x: str, lo: float, hi: float, hint: str) -> str:
    return g.op("Clip", [x, g.const(f"{hint}.min", np.array(lo, np.float32)),
                         g.const(f"{hint}.max", np.array(hi, np.float32))], hint)


def batch_norm(g: Graph, x: str, name: str, m: nn.BatchNorm2d, t: dict) -> str:
    c = m.num_features
    get = lambda k, d: (t[f"{name}.{k}"] if f"{name}.{k}" in t else d).float().numpy()  # noqa: E731
    if f"{name}.running_mean" not in t:
        g.unsupported(f"BatchNorm {name} without running statistics")
    ins = [g.const(f"{name}.weight", get("weight", torch.ones(c))),
           g.const(f"{name}.bias", get("bias", torch.zeros(c))),
           g.const(f"{name}.running_mean", get("running_mean", None)),
           g.const(f"{name}.running_var", get("running_var", None))]
    return g.op("BatchNormalization", [x] + ins, name, epsilon=float(m.eps))


def _bind(node, names: list[str], defaults: dict) -> dict:
    v = dict(defaults)
    v.update(zip(names, node.args))
    v.update(node.kwargs)
    return v


_UNARY = {TF.relu: "Relu", torch.relu: "Relu", TF.hardswish: "HardSwish", torch.sigmoid: "Sigmoid",
          TF.sigmoid: "Sigmoid"}
_BINARY = {operator.add: "Add", torch.add: "Add", operator.mul: "Mul", torch.mul: "Mul"}


def function_node(g: Graph, node, env: dict) -> str:
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
        return clip(g, arg(node.args[0]), lo, hi, hint)
    if f is TF.max_pool2d:
        v = _bind(node, ["input", "kernel_size", "stride", "padding", "dilation", "ceil_mode"],
                  {"stride": None, "padding": 0, "dilation": 1, "ceil_mode": False})
        return pool(g, arg(v["input"]), "MaxPool", hint, v["kernel_size"], v["stride"], v["padding"],
                     v["dilation"], v["ceil_mode"])
    if f is TF.adaptive_avg_pool2d:
        v = _bind(node, ["input", "output_size"], {})
        return global_pool(g, arg(v["input"]), v["output_size"], hint)
    if f is torch.flatten:
        v = _bind(node, ["input", "start_dim", "end_dim"], {"start_dim": 0, "end_dim": -1})
        return flatten(g, arg(v["input"]), v["start_dim"], v["end_dim"], hint)
    if f in (TF.dropout,):
        return arg(node.args[0])
    g.unsupported(f"function {getattr(f, '__name__', f)}")


def method_node(g: Graph, node, env: dict) -> str:
    x = env[node.args[0].name]
    if node.target == "flatten":
        v = _bind(node, ["self", "start_dim", "end_dim"], {"start_dim": 0, "end_dim": -1})
        return flatten(g, x, v["start_dim"], v["end_dim"], node.name)
    if node.target in ("relu", "relu_"):
        return g.op("Relu", [x], node.name)
    if node.target == "sigmoid":
        return g.op("Sigmoid", [x], node.name)
    g.unsupported(f"tensor method .{node.target}()")
