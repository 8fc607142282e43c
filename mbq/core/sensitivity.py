"""Per-layer sensitivity of a quantized model: Hessian trace (shared-probe
Hutchinson), quantization error ||Q(W) − W||², HAWQ-V2's Ω and the MSQ k rule."""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .bitprune import k_rule, omega
from .hessian import hutchinson


@torch.no_grad()
def quant_error(layer: nn.Module, bits: int | None = None) -> float:
    """||Q_n(W) − W||² of a quantized layer at ``bits`` (default: its current width)."""
    return (layer.quantized_weight(bits) - layer.weight).double().pow(2).sum().item()


def hessian_batch(dataset, batches: int, batch_size: int, seed: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """``batches`` shuffled, un-augmented training batches joined into one.

    One batch means one double backward per probe; in eval mode the loss of
    the joined batch is the size-weighted mean PyHessian's full-data mode uses.
    """
    from .data import BatchLoader

    loader = BatchLoader(dataset, batch_size, shuffle=True, augment=False, device=device, seed=seed)
    xs, ys = [], []
    for i, b in enumerate(loader):
        if i >= batches:
            break
        xs.append(b.x)
        ys.append(b.y)
    return torch.cat(xs), torch.cat(ys)


def layer_sensitivity(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                      layers: list[tuple[str, nn.Module]], *, probes: int = 64,
                      tol: float | None = None, seed: int = 0, min_bits: int = 2,
                      guided: bool = True, k_sensitive: int = 1, k_insensitive: int = 2,
                      uniform_k: int = 1) -> dict:
    """Trace, Ω and k of every layer in ``layers`` (quantized layers of ``model``).

    Traces are w.r.t. each layer's weight; ``other_trace`` is the rest of the
    model (BN, biases, float layers), so ``total_trace`` is the whole-model figure.
    """
    was_training = model.training
    model.eval()
    try:
        est = hutchinson(model, lambda: F.cross_entropy(model(x).float(), y), probes=probes,
                         tol=tol, seed=seed)
    finally:
        model.train(was_training)
    rows = []
    for name, m in layers:
        key = f"{name}.weight"
        if key not in est.names:
            raise ValueError(f"{key} is not a trainable parameter; no Hessian trace for it")
        trace, se = est.group([key])
        n = m.weight.numel()
        q = quant_error(m)
        rows.append({"name": name, "params": n, "bits": m.bits[0], "trace": trace, "trace_se": se,
                     "avg_trace": trace / n, "qerr": q, "omega": omega(trace, n, q)})
    ks = k_rule({r["name"]: r["omega"] for r in rows}, {r["name"]: r["bits"] for r in rows},
                min_bits, guided=guided, k_sensitive=k_sensitive, k_insensitive=k_insensitive,
                uniform_k=uniform_k)
    for r in rows:
        r["k"] = ks[r["name"]]
    total, total_se = est.total()
    return {"layers": rows, "probes": est.probes, "total_trace": total, "total_trace_se": total_se,
            "other_trace": total - sum(r["trace"] for r in rows),
            "threshold": sum(r["omega"] for r in rows) / len(rows) if rows else 0.0}
