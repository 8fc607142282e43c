"""What ``mbq eval`` runs for an exported file: the integer reference runtime (packed) or
onnxruntime (ONNX) on the dataset its metadata names; same result shape as
:func:`mbq.core.evaluate_checkpoint.evaluate_checkpoint`."""
from __future__ import annotations

import json
from pathlib import Path

from ..defaults import EVAL_BATCH
from ..errors import MbqError


def load_exported(path: str | Path, fmt: str, device: str = "auto"):
    """(callable model, decoded metadata, torch device) of a packed or ONNX file."""
    import torch

    from ..checkpoint import decode_metadata
    from ..engine import resolve_device

    if fmt == "onnx":
        from .onnx_session import OrtModel

        if not Path(path).is_file():
            raise MbqError(f"no such file: {path}")
        model = OrtModel(path)
        raw = model.metadata()
        if not any(k.startswith("mbq.") for k in raw):
            raise MbqError(f"{path} is an ONNX model without mbq metadata (not written by mbq export)")
        return model, decode_metadata(raw, path), torch.device("cpu")
    from .runtime import load_packed_model

    dev = resolve_device(device)
    model, meta = load_packed_model(path, dev)
    return model, meta, dev


def evaluate_exported(path: str | Path, fmt: str, *, dataset: str | None = None,
                      data_dir: str | None = None, batch_size: int = EVAL_BATCH, limit: int | None = None,
                      device: str = "auto", seed: int = 0) -> dict:
    import torch

    from ..config import TrainConfig
    from ..data import BatchLoader
    from ..evaluate_checkpoint import datasets_for
    from ..engine import seed_everything
    from ..evaluate import evaluate
    from ..quant import compression_ratio
    from .plan import float_arch

    seed_everything(seed)
    model, meta, dev = load_exported(path, fmt, device)
    cfg = TrainConfig.model_validate(meta["mbq.config"])
    name, _, test = datasets_for(meta, cfg, dataset, data_dir)
    test = test.to(dev)
    if limit is not None:
        test = test.subset(torch.arange(min(limit, len(test))))
    r = evaluate(model, BatchLoader(test, batch_size, shuffle=False, augment=False, device=dev))
    export = meta.get("mbq.export")
    export = json.loads(export) if isinstance(export, str) else (export or {})
    s = export.get("setting") or {}
    w, a = (s.get("w"), s.get("a")) if s.get("w") is not None else ("mixed", "mixed")
    label = s.get("label", "?")
    scheme = meta.get("mbq.bit_scheme") or {}
    row = {"label": label, "bits": w if w == a and w != "mixed" else label, "w": w, "a": a,
           "top1": r["top1"], "loss": r["loss"], "n": r["n"],
           "compression": compression_ratio(float_arch(cfg.model.model_dump()), scheme),
           "recalibrated_bn": None}
    runner = "onnxruntime (CPU)" if fmt == "onnx" else "the integer reference runtime"
    note = f"{fmt} export of {export.get('source', '?')} at {label}, run by {runner}"
    return {"checkpoint": str(path), "method": cfg.method, "arch": cfg.model.arch, "dataset": name,
            "format": fmt, "results": [row], "notes": [note]}


def evaluate_if_exported(path: str | Path, *, fixed_flags: list[str], **kwargs) -> dict | None:
    """``mbq eval``'s dispatch: the result for a packed/ONNX file, None for anything else.

    ``fixed_flags``: precision flags the user gave; an export has one fixed precision.
    """
    from . import exported_format

    fmt = exported_format(path)
    if fmt is None:
        return None
    if fixed_flags:
        raise MbqError(f"{path} is an exported ({fmt}) model with a fixed precision; "
                       f"{' / '.join(fixed_flags)} {'does' if len(fixed_flags) == 1 else 'do'} not apply "
                       "(evaluate the checkpoint instead)")
    return evaluate_exported(path, fmt, **kwargs)
