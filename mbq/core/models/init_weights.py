"""Initialise a model from someone else's weights (``mbq train --init PATH``).

Copies tensors by name, skips what does not fit (with a reason) and adapts
an RGB stem to a different channel count, so an ImageNet or CIFAR
checkpoint can seed an MNIST model.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from ..errors import MbqError

_WRAPPERS = ("state_dict", "model", "model_state_dict")  # common training-script envelopes
_PREFIXES = ("module.", "_orig_mod.")  # DDP and torch.compile key prefixes


def _strip(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for p in _PREFIXES:
            if key.startswith(p):
                key, changed = key[len(p):], True
    return key


def _first_line(err: Exception) -> str:
    text = str(err).strip().splitlines()
    line = text[0] if text else type(err).__name__
    return line[:200]


def read_state_dict_file(path) -> dict[str, Tensor]:
    """Read a state_dict from ``.pt``/``.pth`` (torch.load, weights only) or ``.safetensors``.

    Unwraps ``{"state_dict": ...}`` / ``{"model": ...}`` envelopes and strips
    ``module.`` prefixes; non-tensor entries are dropped.
    """
    p = Path(path)
    if not p.is_file():
        raise MbqError(f"init weights file not found: {p}; pass an existing .pt, .pth or .safetensors file")
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj = load_file(str(p), device="cpu")
        else:
            obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # any failure here means the file is not what we need
        raise MbqError(f"cannot read init weights {p} ({_first_line(e)}); "
                       "expected a torch state_dict (.pt/.pth) or a .safetensors file") from e
    for _ in range(3):  # envelopes nest at most a couple of levels in practice
        if isinstance(obj, Mapping):
            inner = next((obj[k] for k in _WRAPPERS if isinstance(obj.get(k), Mapping)), None)
            if inner is not None:
                obj = inner
    if not isinstance(obj, Mapping):
        raise MbqError(f"init weights {p} hold a {type(obj).__name__}, not a state_dict; "
                       "save model.state_dict() instead of the model")
    tensors = {_strip(str(k)): v for k, v in obj.items() if isinstance(v, Tensor)}
    if not tensors:
        raise MbqError(f"init weights {p} contain no tensors; pass a state_dict file")
    return tensors


def _stem_key(model: nn.Module) -> str | None:
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            return f"{name}.weight"
    return None


def _only_in_channels_differ(src: Tensor, dst: Tensor) -> bool:
    return (src.dim() == dst.dim() == 4 and src.shape[0] == dst.shape[0]
            and src.shape[2:] == dst.shape[2:] and src.shape[1] != dst.shape[1])


def _adapt_in_channels(weight: Tensor, channels: int) -> Tensor:
    """Map a stem filter bank to ``channels`` inputs.

    To 1 channel: sum the colour filters, so a grey image gives the response
    the RGB filters gave to that grey replicated in all channels.  To other
    counts: cycle the source channels and rescale by src/dst to keep that
    response the same.
    """
    src = weight.shape[1]
    if channels == 1:
        return weight.sum(dim=1, keepdim=True)
    tiled = weight.repeat(1, math.ceil(channels / src), 1, 1)[:, :channels]
    return tiled * (src / channels)


def load_init_weights(model: nn.Module, state_dict: Mapping[str, Tensor]) -> dict:
    """Copy tensors from ``state_dict`` into ``model`` where name and shape fit.

    Returns ``{"loaded": [keys], "skipped": [(key, reason)], "missing": [model keys
    not filled], "adapted": [(key, how)], "unexpected": [keys the model lacks]}``.
    Keys the model lacks (e.g. an mbq checkpoint's ``w_bits`` / ``weight_quant.*``
    buffers loaded into a float model) are ignored, only listed.  Raises
    MbqError when nothing at all matches: that is a wrong file, not a warm start.
    """
    target = model.state_dict()
    stem = _stem_key(model)
    accepted: dict[str, Tensor] = {}
    skipped, adapted, unexpected = [], [], []
    for raw_key, src in state_dict.items():
        key = _strip(str(raw_key))
        if key not in target:
            unexpected.append(key)
            continue
        dst = target[key]
        if not isinstance(src, Tensor):
            skipped.append((key, f"not a tensor ({type(src).__name__})"))
            continue
        if src.is_floating_point() != dst.is_floating_point():
            skipped.append((key, f"dtype {src.dtype} does not fit {dst.dtype}"))
            continue
        if src.shape != dst.shape:
            if key == stem and _only_in_channels_differ(src, dst):
                adapted.append((key, f"stem input channels {src.shape[1]} -> {dst.shape[1]}"))
                src = _adapt_in_channels(src, dst.shape[1])
            else:
                skipped.append((key, f"shape {tuple(src.shape)} does not fit {tuple(dst.shape)}"))
                continue
        accepted[key] = src
    if not accepted:
        raise MbqError(f"none of the {len(state_dict)} init tensors match {type(model).__name__} "
                       "by name and shape; is the file a checkpoint of the same architecture?")
    # load_state_dict (not raw copy_) so modules' own load hooks still run
    model.load_state_dict(accepted, strict=False)
    return {"loaded": list(accepted), "skipped": skipped,
            "missing": [k for k in target if k not in accepted],
            "adapted": adapted, "unexpected": unexpected}
