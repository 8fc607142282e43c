"""mbq: multi-bit and mixed-precision quantization-aware training.

The public API is re-exported lazily so ``import mbq`` stays cheap (no torch).
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_API = {
    "load_checkpoint": "mbq.core.checkpoint",
    "save_checkpoint": "mbq.core.checkpoint",
    "read_checkpoint": "mbq.core.checkpoint",
    "create_model": "mbq.core.models",
    "list_models": "mbq.core.models",
    "create_dataset": "mbq.core.data",
    "list_datasets": "mbq.core.data",
    "BatchLoader": "mbq.core.data",
    "quantize_model": "mbq.core.quant",
    "set_bits": "mbq.core.quant",
    "get_bit_scheme": "mbq.core.quant",
    "set_bit_scheme": "mbq.core.quant",
    "compression_ratio": "mbq.core.quant",
    "QuantConfig": "mbq.core.config",
    "TrainConfig": "mbq.core.config",
    "evaluate": "mbq.core.evaluate",
    "recalibrate_bn": "mbq.core.evaluate",
    "train": "mbq.core.engine",
    "create_method": "mbq.core.methods",
    "list_methods": "mbq.core.methods",
}

__all__ = sorted(_API) + ["__version__"]


def __getattr__(name: str):
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'mbq' has no attribute {name!r}")


def __dir__():
    return __all__
