"""Name -> builder registry behind ``create_model`` (timm-style).

A builder is ``fn(num_classes, in_channels, image_size, **options)``; its
keyword options with defaults are what ``model_kwargs`` reports, so the
signature is the single source of truth for validation and ``--help``.
"""
from __future__ import annotations

import difflib
import inspect
from typing import Callable

from torch import nn

from ..errors import MbqError
from ._args import positive_int

_COMMON = ("num_classes", "in_channels", "image_size")
_BUILDERS: dict[str, Callable[..., nn.Module]] = {}
_TRAITS: dict[str, dict] = {}
# what a method's defaults may ask of an architecture, and the value of an unmarked one
TRAIT_DEFAULTS = {
    # the head reads a flattened spatial map, not globally pooled features: the random features
    # already separate classes, at 2 bits and above (a method that must learn features can
    # choose otherwise; MAMLOptions.outer_step also asks for the run's widths)
    "flat_features": False,
    # self-attention blocks, trained from scratch: an Adam step that suits a conv net can
    # collapse them (an episodic method picks a smaller one)
    "transformer": False,
}


def register_model(name: str, **traits):
    """Decorator: register ``fn(num_classes, in_channels, image_size, **opts)`` as ``name``,
    with the architecture's ``traits`` (keys of :data:`TRAIT_DEFAULTS`)."""
    unknown = sorted(set(traits) - set(TRAIT_DEFAULTS))
    if unknown:
        raise ValueError(f"model {name!r}: unknown trait {unknown[0]!r}")

    def deco(fn):
        if name in _BUILDERS:
            raise ValueError(f"model {name!r} is registered twice")
        _BUILDERS[name] = fn
        _TRAITS[name] = dict(TRAIT_DEFAULTS, **traits)
        return fn

    return deco


def list_models() -> list[str]:
    return sorted(_BUILDERS)


def _canonical(name: str) -> str:
    # "MobileNet-V2" and "mobilenet_v2" name the same thing on a command line
    return str(name).strip().lower().replace("-", "_")


def _builder(name: str):
    key = _canonical(name)
    if key not in _BUILDERS:
        near = difflib.get_close_matches(key, _BUILDERS, n=1)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        raise MbqError(f"unknown model {name!r}{hint}; choose one of: {', '.join(list_models())}")
    return key, _BUILDERS[key]


def model_traits(name: str) -> dict:
    """The architecture's traits, e.g. ``{"flat_features": True}`` (MbqError if unknown)."""
    key, _ = _builder(name)
    return dict(_TRAITS[key])


def model_kwargs(name: str) -> dict:
    """The architecture's extra options and their defaults, e.g. ``{"width": 1}``."""
    _, fn = _builder(name)
    return {p.name: p.default for p in inspect.signature(fn).parameters.values()
            if p.name not in _COMMON and p.default is not inspect.Parameter.empty}


def create_model(name: str, num_classes: int = 10, in_channels: int = 1, image_size: int = 28,
                 **kwargs) -> nn.Module:
    """Build a freshly initialised (never pretrained) model by registry name."""
    key, fn = _builder(name)
    positive_int("num_classes", num_classes)
    positive_int("in_channels", in_channels)
    positive_int("image_size", image_size)
    allowed = model_kwargs(key)
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        accepts = ", ".join(f"{k}={v!r}" for k, v in allowed.items()) or "no options"
        raise MbqError(f"model {key!r} has no option {unknown[0]!r}; it accepts: {accepts}")
    return fn(num_classes=num_classes, in_channels=in_channels, image_size=image_size, **kwargs)
