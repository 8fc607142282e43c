"""Deployment export: packed integer checkpoints, an integer reference runtime, ONNX.

Torch-free at import (the CLI asks :func:`exported_format` before loading torch):

- ``codes``       integer codes + per-channel scale/zero-point of one quantized layer
- ``fold``        conv -> BatchNorm pairs (torch.fx) and the fold arithmetic
- ``plan``        the deployable description of a model at its current precision
- ``packed``      write/read the packed safetensors file (``mbq.format = "packed"``)
- ``runtime``     rebuild and run a model from a packed file with integer arithmetic
- ``onnx_graph``  a small ONNX graph builder + the float ops of the fx graph
- ``onnx_export`` the QuantizeLinear/DequantizeLinear layers and the checked ModelProto
- ``onnx_session`` an onnxruntime session as an nn.Module (what ``mbq eval`` runs)
- ``export_checkpoint`` / ``evaluate_exported``  what ``mbq export`` / ``mbq eval`` run
"""
from __future__ import annotations

from pathlib import Path

FORMATS = ("packed", "onnx")


def exported_format(path: str | Path) -> str | None:
    """``"onnx"``, ``"packed"`` or None (a training checkpoint, or not an mbq file)."""
    path = Path(path)
    if path.suffix.lower() == ".onnx":
        return "onnx"
    if not path.is_file():
        return None  # the regular checkpoint path reports the missing file
    from ..checkpoint import read_header

    return "packed" if read_header(path).get("mbq.format") == "packed" else None
