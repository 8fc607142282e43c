"""Assign a mixed-precision scheme to a trained checkpoint without training
(what ``mbq prune`` runs): greedy on Hessian sensitivity, or one MSQ round."""
from __future__ import annotations

import json
from pathlib import Path

from .errors import MbqError

RULES = ("greedy", "msq")
_PROVENANCE = ("mbq.format", "mbq.format_version", "mbq.version", "mbq.torch_version", "mbq.created",
               "mbq.metrics")  # rewritten or stale once the scheme changes


def check_prune_args(out: Path, target: float | None, rule: str, alpha: float) -> None:
    """Cheap user-input checks (torch-free), before any loading."""
    if rule not in RULES:
        raise MbqError(f"--rule must be one of {', '.join(RULES)} (got {rule})")
    if rule == "greedy" and target is None:
        raise MbqError("--target-compression is required with --rule greedy")
    if target is not None and not target >= 1:
        raise MbqError(f"--target-compression must be at least 1 (got {target:g})")
    if not 0 <= alpha <= 1:
        raise MbqError(f"--prune-threshold must be in [0, 1] (got {alpha:g})")
    if out.suffix != ".safetensors":
        raise MbqError(f"--out must end in .safetensors (got {out})")
    if not out.parent.exists():
        raise MbqError(f"--out: folder {out.parent} does not exist")


def _history(meta: dict) -> list:
    raw = meta.get("mbq.prune_history") or []
    return json.loads(raw) if isinstance(raw, str) else list(raw)


def prune_checkpoint(path: str | Path, out: str | Path, *, target: float | None = None,
                     rule: str = "greedy", alpha: float = 0.3, min_bits: int = 2, probes: int = 64,
                     tol: float | None = None, batches: int = 4, batch_size: int = 128,
                     device: str = "auto", seed: int = 0, data_dir: str | None = None) -> dict:
    from .bitprune import LayerBits, compression, greedy_to_target, lsb_nonzero_rate, max_compression, msq_round
    from .checkpoint import save_checkpoint
    from .config import TrainConfig
    from .methods import create_method, options_class
    from .quant import FP_BITS, get_bit_scheme, weight_layers
    from .quant.quantizers import RoundClampWeight
    from .sensitivity import layer_sensitivity, quant_error
    from .sensitivity_checkpoint import check_probe_args, load_for_sensitivity

    out = Path(out)
    check_prune_args(out, target, rule, alpha)
    check_probe_args(probes, batches, batch_size, tol, min_bits)
    model, meta, layers, x, y = load_for_sensitivity(path, batches=batches, batch_size=batch_size,
                                                     device=device, seed=seed, data_dir=data_dir)
    if min_bits == 1 and not all(m.weight_quant.supports_1bit for _, m in layers):
        raise MbqError("--min-bits 1: this checkpoint's weight quantizer has no 1-bit form (use 2)")
    if rule == "msq" and not all(isinstance(m.weight_quant, RoundClampWeight) for _, m in layers):
        raise MbqError("--rule msq reads the LSBs of RoundClamp weights; this checkpoint uses another "
                       "weight quantizer (use --rule greedy)")
    qnames = {n for n, _ in layers}
    lbits = [LayerBits(n, m.weight.numel(), m.bits[0] if n in qnames else FP_BITS, n in qnames)
             for n, m in weight_layers(model)]
    before = {n: m.bits[0] for n, m in layers}
    c_before = compression(lbits)
    if target is not None:
        cmax = max_compression(lbits, min_bits)
        if target > cmax + 1e-9:
            raise MbqError(f"--target-compression {target:g} is out of reach: with --min-bits {min_bits} "
                           f"this model compresses at most {cmax:.2f}x")
    sens = layer_sensitivity(model, x, y, layers, probes=probes, tol=tol, seed=seed, min_bits=min_bits)
    rows = {r["name"]: r for r in sens["layers"]}
    mods = dict(layers)
    if rule == "greedy":
        omega_at = {n: {b: rows[n]["avg_trace"] * quant_error(mods[n], b)
                        for b in (1, 2, 3, 4, 5, 6, 7, 8, 16, 32) if min_bits <= b <= before[n]}
                    for n in qnames}
        bits, steps = greedy_to_target(lbits, omega_at, target, min_bits)
        events = [dict(s, rule="greedy", omega=omega_at[s["layer"]][s["after"]]) for s in steps]
    else:
        ks = {n: r["k"] for n, r in rows.items()}
        rates = {n: lsb_nonzero_rate(mods[n].weight, before[n], k, mods[n].weight_quant.scale(mods[n].weight))
                 for n, k in ks.items() if k > 0}
        bits, pruned = msq_round(lbits, ks, rates, alpha, target)
        events = [{"layer": p.layer, "before": p.before, "after": p.after, "rule": "msq",
                   "omega": rows[p.layer]["omega"], "rate": rates[p.layer]} for p in pruned]
    for n, m in layers:
        m.set_precision(bits[n])
    c_after = compression(lbits, bits)

    new_meta = {k: v for k, v in meta.items() if k not in _PROVENANCE}
    new_meta["mbq.prune_history"] = _history(meta) + [dict(e, source="mbq prune") for e in events]
    new_meta["mbq.pruned_from"] = str(path)
    cfg = new_meta["mbq.config"]
    if "scheme" in options_class(cfg["method"]).model_fields:  # e.g. qat: evaluate at this scheme
        cfg["options"] = dict(cfg.get("options") or {}, scheme=get_bit_scheme(model))
    save_checkpoint(model, out, new_meta)
    notes = []
    if create_method(TrainConfig.model_validate(cfg)).eval_settings()[0].w is not None:
        notes.append(f"mbq eval evaluates a {cfg['method']} checkpoint at its own widths; fine-tune "
                     f"with mbq train --method qat --init {out} to use the pruned scheme")
    return {"checkpoint": str(path), "out": str(out), "rule": rule, "target_compression": target,
            "compression_before": c_before, "compression_after": c_after,
            "average_bits_before": FP_BITS / c_before, "average_bits_after": FP_BITS / c_after,
            "bits_before": before, "bits_after": {n: bits[n] for n in before}, "steps": events,
            "probes": sens["probes"], "images": len(y), "sensitivity": sens["layers"], "notes": notes}
