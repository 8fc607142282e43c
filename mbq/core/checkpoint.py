"""mbq checkpoints: one safetensors file, ``mbq.*`` metadata in its header.

``save_checkpoint`` writes atomically; ``read_checkpoint`` validates the
header; ``load_checkpoint`` rebuilds the model the metadata describes.
"""
from __future__ import annotations

import datetime as _dt
import json
import struct
from pathlib import Path
from typing import Any

from ._atomic import atomic_path
from .errors import MbqError

FORMAT_VERSION = "1"
_REQUIRED = ("mbq.format", "mbq.format_version", "mbq.method", "mbq.arch", "mbq.num_classes",
             "mbq.in_channels", "mbq.image_size")
_JSON_KEYS = ("mbq.dataset", "mbq.bits", "mbq.bit_scheme", "mbq.config", "mbq.metrics")


def _version() -> str:
    try:
        from importlib.metadata import version
        return version("mbq")
    except Exception:  # running from a source tree
        return "0+unknown"


def read_header(path: str | Path) -> dict[str, str]:
    """The safetensors ``__metadata__`` of ``path``; MbqError for anything unreadable."""
    path = Path(path)
    if not path.exists():
        raise MbqError(f"no such file: {path}")
    if path.is_dir():
        raise MbqError(f"{path} is a folder, not a checkpoint file")
    try:
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) < 8:
                raise ValueError("file too short")
            (n,) = struct.unpack("<Q", raw)
            size = path.stat().st_size
            if n > size - 8 or n > 100_000_000:
                raise ValueError("header length past end of file")
            header = json.loads(f.read(n))
            ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"]
            if ends and 8 + n + max(ends) > size:
                raise ValueError("tensor data past end of file (truncated?)")
    except PermissionError:
        raise MbqError(f"cannot read {path}: permission denied") from None
    except (ValueError, KeyError, TypeError, json.JSONDecodeError) as e:
        raise MbqError(f"{path} is not a readable safetensors file ({e}); is it truncated or corrupt?") from None
    return header.get("__metadata__") or {}


def read_checkpoint(path: str | Path) -> tuple[dict, dict[str, Any]]:
    """(state_dict on CPU, decoded metadata) of an mbq checkpoint."""
    meta = decode_metadata(read_header(path), path)
    from safetensors.torch import load_file
    try:
        tensors = load_file(str(path), device="cpu")
    except Exception as e:  # safetensors raises its own error types
        raise MbqError(f"{path}: could not read tensors ({e}); the file may be corrupt") from None
    return tensors, meta


def decode_metadata(raw: dict[str, str], path: str | Path = "file") -> dict[str, Any]:
    if not any(k.startswith("mbq.") for k in raw):
        raise MbqError(f"{path} is a safetensors file without mbq metadata; it was not written by "
                       "mbq (use --init to load plain float weights)")
    missing = [k for k in _REQUIRED if k not in raw]
    if missing:
        raise MbqError(f"{path}: mbq metadata is incomplete (missing {', '.join(missing)})")
    if raw["mbq.format_version"] != FORMAT_VERSION:
        raise MbqError(f"{path}: checkpoint format version {raw['mbq.format_version']} is not "
                       f"supported (this mbq reads version {FORMAT_VERSION})")
    meta: dict[str, Any] = dict(raw)
    try:
        for k in _JSON_KEYS:
            if k in raw:
                meta[k] = json.loads(raw[k])
        for k in ("mbq.num_classes", "mbq.in_channels", "mbq.image_size"):
            meta[k] = int(raw[k])
    except (ValueError, json.JSONDecodeError) as e:
        raise MbqError(f"{path}: mbq metadata is malformed ({e})") from None
    if isinstance(meta.get("mbq.config"), dict):
        _upgrade_config(meta["mbq.config"])
    return meta


def _upgrade_config(cfg: dict) -> None:
    """Give an option whose default changed the value an older checkpoint was trained with."""
    from .methods import list_methods, options_class

    quant, options = cfg.get("quant"), cfg.get("options")
    if isinstance(quant, dict):
        quant.setdefault("signed_inputs", False)  # every input was quantized unsigned before
    if cfg.get("method") not in list_methods() or not isinstance(quant, dict) or not isinstance(options, dict):
        return  # create_method reports what is wrong
    for option, (field, before) in options_class(cfg["method"]).recorded_in_quant.items():
        quant.setdefault(field, before)
        options.setdefault(option, quant[field])


def encode_metadata(meta: dict[str, Any]) -> dict[str, str]:
    import torch

    out = {"mbq.format": "checkpoint", "mbq.format_version": FORMAT_VERSION,
           "mbq.version": _version(), "mbq.torch_version": torch.__version__,
           "mbq.created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    for k, v in meta.items():
        out[k] = v if isinstance(v, str) else json.dumps(v, sort_keys=True, default=str)
    return out


def save_checkpoint(model, path: str | Path, meta: dict[str, Any]) -> Path:
    """Write ``model.state_dict()`` + metadata atomically. ``meta`` keys are ``mbq.*``.

    ``mbq.bit_scheme`` is always refreshed from the model.
    """
    from safetensors.torch import save_file

    from .quant import get_bit_scheme

    path = Path(path)
    if not path.parent.exists():
        raise MbqError(f"output folder {path.parent} does not exist")
    meta = dict(meta)
    meta["mbq.bit_scheme"] = get_bit_scheme(model)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    state = _dedupe_shared(state)
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=encode_metadata(meta))
    return path


def _dedupe_shared(state: dict) -> dict:
    """safetensors refuses tensors sharing storage; clone the repeats."""
    seen = set()
    for k, v in state.items():
        ptr = (v.untyped_storage().data_ptr(), v.storage_offset(), v.numel())
        if ptr in seen and v.numel():
            state[k] = v.clone()
        seen.add(ptr)
    return state


def load_checkpoint(path: str | Path, device: str = "cpu"):
    """Rebuild the model an mbq checkpoint describes and load its weights.

    Returns ``(model, meta)``; the model is in eval mode on ``device``.
    """
    tensors, meta = read_checkpoint(path)
    if meta["mbq.format"] != "checkpoint":
        raise MbqError(f"{path} is an mbq '{meta['mbq.format']}' file, not a training checkpoint")
    from .methods import build_model_from_meta

    model = build_model_from_meta(meta)
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        detail = " ".join(s.strip() for s in first[1:3]) if len(first) > 1 else first[0]
        raise MbqError(f"{path}: tensors do not fit the recorded architecture "
                       f"{meta['mbq.arch']} ({detail[:300]})") from None
    return model.to(device).eval(), meta
