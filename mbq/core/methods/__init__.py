"""Method registry. Torch-free: entries are import paths, resolved on use.

Each entry: name -> (options class, method class, one-line summary).
"""
from __future__ import annotations

import importlib
from typing import Any

from ..errors import MbqError

_METHODS: dict[str, tuple[str, str, str]] = {
    "fp": ("options.base:FPOptions", "fp:FPMethod", "float training (the reference)"),
    "qat": ("options.base:QATOptions", "qat:QATMethod", "QAT at one dedicated bit-width"),
}


def _resolve(spec: str):
    mod, _, attr = spec.partition(":")
    return getattr(importlib.import_module(f"{__name__}.{mod}"), attr)


def list_methods() -> dict[str, str]:
    return {k: v[2] for k, v in _METHODS.items()}


def _entry(name: str):
    if name not in _METHODS:
        raise MbqError(f"unknown method '{name}' (choose from: {', '.join(_METHODS)})")
    return _METHODS[name]


def options_class(name: str):
    return _resolve(_entry(name)[0])


def method_class(name: str):
    return _resolve(_entry(name)[1])


def create_method(cfg) -> Any:
    """The Method object for a resolved :class:`TrainConfig`."""
    from pydantic import ValidationError

    from ..config import format_validation_error

    try:
        opts = options_class(cfg.method).model_validate(cfg.options)
    except ValidationError as e:
        raise MbqError(format_validation_error(e)) from None
    return method_class(cfg.method)(cfg, opts)


def build_model_from_meta(meta: dict):
    """Rebuild the (quantized) model a checkpoint's metadata describes."""
    from pydantic import ValidationError

    from ..config import TrainConfig, format_validation_error

    try:
        cfg = TrainConfig.model_validate(meta["mbq.config"])
    except (ValidationError, KeyError, TypeError) as e:
        msg = format_validation_error(e) if isinstance(e, ValidationError) else str(e)
        raise MbqError(f"checkpoint config is unusable: {msg}") from None
    return create_method(cfg).build_model()
