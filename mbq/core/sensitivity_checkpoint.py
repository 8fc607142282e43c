"""Per-layer Hessian sensitivity of a saved checkpoint (what ``mbq sensitivity`` runs)."""
from __future__ import annotations

from pathlib import Path

from .errors import MbqError


def check_probe_args(probes: int, batches: int, batch_size: int, tol: float | None,
                     min_bits: int) -> None:
    if probes < 1:
        raise MbqError(f"--probes must be at least 1 (got {probes})")
    if batches < 1 or batch_size < 1:
        raise MbqError("--batches and --batch-size must be at least 1")
    if tol is not None and not tol > 0:
        raise MbqError(f"--tol must be a positive number (got {tol})")
    if not 1 <= min_bits <= 8:
        raise MbqError(f"--min-bits must be in 1..8 (got {min_bits})")


def load_for_sensitivity(path: str | Path, *, batches: int, batch_size: int, device: str, seed: int,
                         data_dir: str | None = None):
    """(model, meta, quantized layers, x, y): a checkpoint and a batch of its training data."""
    from .checkpoint import load_checkpoint
    from .config import TrainConfig
    from .data import create_dataset
    from .engine import resolve_device, seed_everything
    from .quant import quantized_layers
    from .quant.bitplane import is_bit_plane
    from .sensitivity import hessian_batch

    dev = resolve_device(device)
    seed_everything(seed)
    model, meta = load_checkpoint(path, dev)
    layers = quantized_layers(model)
    if not layers:
        raise MbqError(f"{path} has no quantized layers (method {meta['mbq.method']}); sensitivity and "
                       "pruning need a quantized checkpoint (train with --method qat or msq)")
    if any(is_bit_plane(m) for _, m in layers):
        raise MbqError(f"{path} keeps its weights as BSQ bit planes; sensitivity and pruning need "
                       "float master weights (use an msq or qat checkpoint)")
    cfg = TrainConfig.model_validate(meta["mbq.config"])
    ddir = data_dir or (str(cfg.data.data_dir) if cfg.data.data_dir else None)
    train, _ = create_dataset(cfg.data.name, data_dir=ddir, image_size=cfg.data.image_size)
    x, y = hessian_batch(train.to(dev), batches, batch_size, seed, dev)
    return model, meta, layers, x, y


def checkpoint_sensitivity(path: str | Path, *, probes: int = 64, tol: float | None = None,
                           batches: int = 4, batch_size: int = 128, min_bits: int = 2,
                           device: str = "auto", seed: int = 0, data_dir: str | None = None) -> dict:
    import time

    from .sensitivity import layer_sensitivity

    check_probe_args(probes, batches, batch_size, tol, min_bits)
    model, meta, layers, x, y = load_for_sensitivity(path, batches=batches, batch_size=batch_size,
                                                     device=device, seed=seed, data_dir=data_dir)
    t0 = time.perf_counter()
    res = layer_sensitivity(model, x, y, layers, probes=probes, tol=tol, seed=seed, min_bits=min_bits)
    return dict(res, checkpoint=str(path), method=meta["mbq.method"], arch=meta["mbq.arch"],
                dataset=(meta.get("mbq.dataset") or {}).get("name"), batches=batches,
                batch_size=batch_size, images=len(y), seed=seed, min_bits=min_bits,
                seconds=time.perf_counter() - t0)
