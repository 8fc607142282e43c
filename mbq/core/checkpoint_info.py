"""A summary of a checkpoint (what ``mbq info`` shows)."""
from __future__ import annotations

from pathlib import Path


def checkpoint_info(path: str | Path) -> dict:
    from torch import nn

    from .checkpoint import load_checkpoint
    from .quant import average_bits, compression_ratio, get_bit_scheme, weight_layers

    model, meta = load_checkpoint(path, "cpu")
    scheme = get_bit_scheme(model)
    layers = []
    for name, m in weight_layers(model):
        wa = scheme.get(name, {"w": 32, "a": 32})
        layers.append({"name": name, "kind": "conv" if isinstance(m, nn.Conv2d) else "linear",
                       "params": m.weight.numel(), "w": wa["w"], "a": wa["a"],
                       "quantized": name in scheme})
    extra = {k.removeprefix("mbq."): _decoded(v) for k, v in meta.items()
             if k.startswith("mbq.") and k not in _SHOWN}
    return {"checkpoint": str(path), "format": meta["mbq.format"], "method": meta["mbq.method"],
            "arch": meta["mbq.arch"], "dataset": (meta.get("mbq.dataset") or {}).get("name"),
            "bits": meta.get("mbq.bits"), "parameters": sum(p.numel() for p in model.parameters()),
            "compression": compression_ratio(model), "average_bits": average_bits(model),
            "created": meta.get("mbq.created"), "mbq_version": meta.get("mbq.version"),
            "metrics": meta.get("mbq.metrics"), "layers": layers, "extra": extra}


def _decoded(v):
    """Method metadata (e.g. mbq.prune_history) is JSON text in the header."""
    import json

    if isinstance(v, str) and v[:1] in "[{":
        try:
            return json.loads(v)
        except ValueError:
            pass
    return v


_SHOWN = {"mbq.format", "mbq.format_version", "mbq.method", "mbq.arch", "mbq.dataset", "mbq.bits",
          "mbq.bit_scheme", "mbq.config", "mbq.metrics", "mbq.created", "mbq.version",
          "mbq.num_classes", "mbq.in_channels", "mbq.image_size", "mbq.torch_version"}
