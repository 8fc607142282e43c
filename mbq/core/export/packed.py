"""The packed integer file: one safetensors file, ``mbq.format = "packed"``.

Per rewritten layer ``L`` (see ``mbq.packed`` in the header for shapes and widths):

    L.weight.codes       uint8, codes bit-packed LSB-first at the layer's width
                         (two's complement when ``signed``), ``numel`` codes
    L.weight.scale       float32 [C] or [1]     w = scale * (q - zero_point)
    L.weight.zero_point  float32 [C] or [1]
    L.weight             float32, instead of the three above for a float layer
    L.bias               float32 [C] (includes a folded BatchNorm)

Every other tensor of the float architecture keeps its state_dict name.  The header
carries the checkpoint's ``mbq.*`` metadata (architecture, dataset, config), the bit
scheme, and ``mbq.packed``: per layer kind, shape, widths, input quantizer, folded BN.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from ..checkpoint import read_checkpoint
from ..errors import MbqError
from ..quant.functional import pack_bits, unpack_bits
from .codes import ActCodes, WeightCodes
from .plan import ExportPlan, LayerPlan

PACKED_VERSION = 1


def _f32(x: float) -> float:
    return float(torch.tensor(x, dtype=torch.float32))


def _layer_meta(p: LayerPlan) -> dict:
    c = p.codes
    return {"kind": p.kind, "shape": p.shape, "numel": p.numel, "w_bits": p.w_bits,
            "a_bits": p.a_bits, "signed": c.signed if c else None,
            "quantizer": c.quantizer if c else None, "bias": p.bias is not None,
            "input": None if p.act is None else {
                "bits": p.act.bits, "scale": _f32(p.act.scale), "lo": p.act.lo, "hi": p.act.hi,
                "quantizer": p.act.quantizer},
            "conv": p.conv, "folded_bn": p.folded_bn}


def _layer_tensors(p: LayerPlan) -> dict[str, torch.Tensor]:
    out = {}
    if p.codes is not None:
        out[f"{p.name}.weight.codes"] = pack_bits(p.codes.codes, p.codes.bits)
        out[f"{p.name}.weight.scale"] = p.codes.scale.float()
        out[f"{p.name}.weight.zero_point"] = p.codes.zero_point.float()
    else:
        out[f"{p.name}.weight"] = p.weight.float()
    if p.bias is not None:
        out[f"{p.name}.bias"] = p.bias.float()
    return out


def packed_tensors(plan: ExportPlan) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    """(all tensors of the file, bytes per rewritten layer)."""
    tensors, sizes = {}, {}
    for p in plan.layers.values():
        t = _layer_tensors(p)
        sizes[p.name] = sum(v.numel() * v.element_size() for v in t.values())
        tensors.update(t)
    for k, v in plan.tensors.items():
        if k in tensors:
            raise MbqError(f"cannot export: tensor name {k} is used twice")
        tensors[k] = v.contiguous()
    return tensors, sizes


def packed_metadata(plan: ExportPlan, meta: dict, setting: dict) -> dict:
    out = {k: v for k, v in meta.items() if k.startswith("mbq.")}
    out["mbq.format"] = "packed"
    out["mbq.bit_scheme"] = plan.scheme
    out["mbq.packed"] = {"version": PACKED_VERSION, "setting": setting,
                         "layers": {n: _layer_meta(p) for n, p in plan.layers.items()},
                         "folded_bn": plan.folded_bn}
    return out


def write_packed(plan: ExportPlan, meta: dict, setting: dict, path: str | Path) -> dict[str, int]:
    """Write the packed file to ``path`` (the caller makes it atomic); bytes per layer."""
    from safetensors.torch import save_file

    from ..checkpoint import encode_metadata

    tensors, sizes = packed_tensors(plan)
    save_file(tensors, str(path), metadata=encode_metadata(packed_metadata(plan, meta, setting)))
    return sizes


def _packed_info(meta: dict, path) -> dict:
    if meta.get("mbq.format") != "packed":
        raise MbqError(f"{path} is not an mbq packed file (mbq.format={meta.get('mbq.format')})")
    try:
        info = json.loads(meta["mbq.packed"])
    except (KeyError, ValueError) as e:
        raise MbqError(f"{path}: packed metadata is missing or malformed ({e})") from None
    if info.get("version") != PACKED_VERSION:
        raise MbqError(f"{path}: packed format version {info.get('version')} is not supported "
                       f"(this mbq reads version {PACKED_VERSION})")
    return info


def _take(tensors: dict, key: str, path) -> torch.Tensor:
    if key not in tensors:
        raise MbqError(f"{path}: tensor {key} is missing; the file is incomplete")
    return tensors.pop(key)


def _read_layer(name: str, m: dict, tensors: dict, path) -> LayerPlan:
    p = LayerPlan(name, m["kind"], list(m["shape"]), m["w_bits"], m["a_bits"], conv=m["conv"],
                  folded_bn=m["folded_bn"])
    if m["w_bits"] <= 8:
        packed = _take(tensors, f"{name}.weight.codes", path)
        if packed.numel() * 8 < m["numel"] * m["w_bits"]:
            raise MbqError(f"{path}: {name}.weight.codes is too short for its shape")
        q = unpack_bits(packed, m["w_bits"], m["numel"], signed=m["signed"]).reshape(p.shape)
        p.codes = WeightCodes(q, m["w_bits"], m["signed"],
                              _take(tensors, f"{name}.weight.scale", path).double(),
                              _take(tensors, f"{name}.weight.zero_point", path).double(),
                              m["quantizer"])
    else:
        p.weight = _take(tensors, f"{name}.weight", path).double()
    if m["bias"]:
        p.bias = _take(tensors, f"{name}.bias", path).double()
    a = m["input"]
    if a is not None:
        p.act = ActCodes(a["bits"], a["scale"], a["lo"], a["hi"], a["quantizer"])
    return p


def read_packed(path: str | Path) -> tuple[ExportPlan, dict]:
    """(plan, decoded metadata) of a packed file; MbqError for anything malformed."""
    tensors, meta = read_checkpoint(path)
    info = _packed_info(meta, path)
    try:
        layers = {n: _read_layer(n, m, tensors, path) for n, m in info["layers"].items()}
    except (KeyError, TypeError) as e:
        raise MbqError(f"{path}: packed layer metadata is malformed ({e})") from None
    plan = ExportPlan(layers, tensors, meta.get("mbq.bit_scheme") or {}, info.get("folded_bn", []))
    meta["mbq.packed"] = info
    return plan, meta
