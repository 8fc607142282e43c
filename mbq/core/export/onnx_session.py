"""onnxruntime behind the nn.Module interface that evaluate() / predict() use."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..errors import MbqError
from ._deps import require


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
