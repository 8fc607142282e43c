"""What ``mbq select-coreset`` runs: score a checkpoint's training split at
each requested width and write the per-bit scores and a first selection."""
from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Callable

from ..defaults import EVAL_BATCH
from ..errors import MbqError

_STATS = ("mean", "std", "min", "max", "median")


def _bits_text(bits) -> str:
    return ",".join("fp" if b >= 32 else str(b) for b in bits)


def _stats(t) -> dict[str, float]:
    t = t.double()
    return {"mean": t.mean().item(), "std": t.std(unbiased=False).item(), "min": t.min().item(),
            "max": t.max().item(), "median": t.median().item()}


def select_coreset(checkpoint: str | Path, out: str | Path, *, bits: list[int] | None = None,
                   fraction: float = 0.2, score: str = "el2n", sampling: str = "weighted",
                   uniform_mix: float | None = None, batch_size: int = EVAL_BATCH, device: str = "auto", seed: int = 0,
                   start: Callable[[int], None] | None = None,
                   progress: Callable[[int], None] | None = None) -> dict:
    """Score every training sample at every width of ``bits``; write ``out``; return a summary.

    The training split is rebuilt from the checkpoint's own config (dataset,
    --val-size, --train-subset, --seed), so a later ``mbq train --coreset``
    with the same data flags indexes the same images.
    """
    from ..checkpoint import load_checkpoint
    from ..config import TrainConfig
    from ..data import BatchLoader
    from ..engine import load_data, resolve_device, seed_everything
    from ..methods import create_method
    from ..methods.base import Setting
    from .io import CoresetFile, labels_fingerprint, write_coreset
    from .sampling import UNIFORM_MIX, draw_subset, overlap, subset_size
    from .scores import compute_scores

    if not 0 < fraction <= 1:
        raise MbqError(f"--fraction must be in (0, 1], got {fraction}")
    uniform_mix = UNIFORM_MIX if uniform_mix is None else uniform_mix
    if not 0 <= uniform_mix <= 1:
        raise MbqError(f"--uniform-mix must be in [0, 1], got {uniform_mix}")
    if score == "forgetting":
        raise MbqError("forgetting scores are counted during training; use it in mbq train "
                       "(--coreset-score forgetting), or choose el2n, grand, entropy or random here")
    out = Path(out)
    if out.suffix != ".safetensors":
        raise MbqError(f"--out must end in .safetensors (got {out})")
    if not out.parent.exists():
        raise MbqError(f"--out: folder {out.parent} does not exist")
    dev = resolve_device(device)
    seed_everything(seed)
    model, meta = load_checkpoint(checkpoint, dev)
    cfg = TrainConfig.model_validate(meta["mbq.config"])
    method = create_method(cfg)
    bits = list(bits) if bits else list(meta.get("mbq.bits") or cfg.bits)
    bad = [b for b in bits if not method.supports_bits(b)]
    if bad:
        raise MbqError(f"--bits {_bits_text(bad)} is not available for this {cfg.method} checkpoint")
    train, _, _ = load_data(cfg, dev)
    n = len(train)
    loader = BatchLoader(train, batch_size, shuffle=False, augment=False, device=dev)
    calib = BatchLoader(train, min(batch_size, 256), shuffle=True, augment=False, device=dev, seed=seed)
    if start is not None:
        start(n * len(bits))
    scores, notes = {}, []
    for b in bits:
        s = Setting(b, cfg.act_bits_for(b))
        method.apply_setting(model, s)
        note = method.prepare_eval(model, s, calib)
        if note:
            notes.append(note)
        scores[b] = compute_scores(model, loader, score, n, seed=seed, bit=b, progress=progress)
    method.apply_setting(model, method.eval_settings()[0])  # puts back any borrowed BN state
    picks = {b: draw_subset(scores[b], fraction, sampling, seed=seed, epoch=0, bit=b, mix=uniform_mix)
             for b in bits}
    k = subset_size(n, fraction)
    info = {"dataset": train.name, "size": n, "labels_fingerprint": labels_fingerprint(train.labels),
            "score": score, "sampling": sampling, "uniform_mix": uniform_mix, "fraction": fraction,
            "seed": seed, "subset_size": k,
            "source": str(checkpoint),
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    write_coreset(out, CoresetFile(scores, picks, info))
    pairs = {f"{a}-{c}": overlap(picks[a], picks[c]) for i, a in enumerate(bits) for c in bits[i + 1:]}
    return {"out": str(out), "checkpoint": str(checkpoint), "method": cfg.method, "dataset": train.name,
            "size": n, "bits": bits, "score": score, "sampling": sampling, "uniform_mix": uniform_mix,
            "fraction": fraction,
            "subset_size": k, "stats": {str(b): _stats(scores[b]) for b in bits}, "overlap": pairs,
            "notes": notes}
