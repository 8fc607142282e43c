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
    "msq": ("options.msq:MSQOptions", "msq:MSQMethod", "mixed precision by LSB sparsification: RoundClamp + Hessian-guided bit pruning"),
    "bsq": ("options.bsq:BSQOptions", "bsq:BSQMethod", "bit-level sparsity baseline: trainable bit planes + group lasso"),
    "mebqat": ("options.mebqat:MEBQATOptions", "mebqat:MEBQATMethod", "one model for every (w, a) pair: QAT as meta-learning over bit-width tasks"),
    "mebqat-maml": ("options.fewshot:MEBQATMAMLOptions", "mebqat_maml:MEBQATMAMLMethod", "few-shot MEBQAT: first-order MAML over (bit-width pair, episode) tasks"),
    "mebqat-pn": ("options.fewshot:MEBQATPNOptions", "mebqat_pn:MEBQATPNMethod", "few-shot MEBQAT: ProtoNet over (bit-width pair, episode) tasks"),
    "fomaml": ("options.fewshot:FOMAMLOptions", "fomaml:FOMAMLMethod", "few-shot baseline: first-order MAML at FP"),
    "protonet": ("options.fewshot:PNOptions", "protonet:ProtoNetMethod", "few-shot baseline: prototypical networks at FP"),
    "qat-fomaml": ("options.fewshot:MAMLOptions", "qat_fewshot:QATFOMAMLMethod", "few-shot baseline: first-order MAML at one (w, a) pair"),
    "qat-pn": ("options.fewshot:PNOptions", "qat_fewshot:QATPNMethod", "few-shot baseline: ProtoNet at one (w, a) pair"),
    "emq": ("options.emq:EMQOptions", "emq:EMQMethod", "one model for every width: WBC + shared BN + bit-wise coresets"),
    "anyprec": ("options.anyprec:AnyPrecOptions", "anyprec:AnyPrecMethod", "Any-Precision DNN: switchable BN, recursive KD"),
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
        raise MbqError(format_validation_error(e, as_flags=True)) from None
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
