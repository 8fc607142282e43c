"""Per-sample importance scores of one child (the model at its current width).

Pure per-batch formulas (logits in, one score per sample out) plus
``compute_scores``, which runs a model over a loader in eval mode and
scatters the scores to dataset indices.
"""
from __future__ import annotations

from typing import Callable, Iterable

import torch
from torch import nn
from torch.nn import functional as F

from .._layout import inference_layout
from ..quant import frozen_weights
from .sampling import mix_seed

FORWARD_SCORES = ("el2n", "grand", "entropy")


def el2n(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """||softmax(f(x)) - onehot(y)||_2: the norm of the loss gradient at the logits."""
    p = logits.float().softmax(1)
    return (p - F.one_hot(y, p.shape[1]).to(p.dtype)).norm(dim=1)


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Predictive entropy -sum p log p (high = uncertain)."""
    logp = logits.float().log_softmax(1)
    return -(logp.exp() * logp).sum(1)


def grand(logits: torch.Tensor, y: torch.Tensor, feats: torch.Tensor, bias: bool) -> torch.Tensor:
    """Norm of the per-sample cross-entropy gradient of the last linear layer.

    For z = W h + b that gradient is (p - y) h^T (and p - y for b), whose
    norm is ||p - y|| * sqrt(||h||^2 + 1): exact, without per-sample autograd.
    """
    h2 = feats.float().flatten(1).pow(2).sum(1)
    return el2n(logits, y) * (h2 + (1.0 if bias else 0.0)).sqrt()


def last_linear(model: nn.Module) -> nn.Linear:
    layers = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not layers:
        raise ValueError("the grand score needs a model whose last layer is nn.Linear")
    return layers[-1]


class _LastInput:
    """Captures the input the last linear layer multiplies (quantized if it quantizes)."""

    def __init__(self, layer: nn.Linear):
        self.layer, self.value = layer, None
        self.handle = layer.register_forward_hook(self._hook)

    def _hook(self, module, args, _out):
        x = args[0]
        q = getattr(module, "quantized_input", None)
        self.value = q(x) if q is not None else x

    def close(self) -> None:
        self.handle.remove()


@torch.no_grad()
def compute_scores(model: nn.Module, loader: Iterable, score: str, n: int, *, seed: int = 0,
                   bit: int = 0, progress: Callable[[int], None] | None = None,
                   partial: bool = False) -> torch.Tensor:
    """Score of every one of the ``n`` samples the loader yields (float32, CPU, by ``Batch.idx``).

    ``partial``: the loader covers a sample of the data; the others get the mean score.

    ``random`` needs no model pass: uniform scores from (seed, bit).
    ``forgetting`` is gathered during training (see forgetting.py), not here.
    """
    if score == "random":
        return torch.rand(n, generator=torch.Generator().manual_seed(mix_seed(seed, bit, 17)))
    if score not in FORWARD_SCORES:
        raise ValueError(f"score {score!r} is not computed by a forward pass")
    out = torch.full((n,), float("nan"))
    hook = _LastInput(last_linear(model)) if score == "grand" else None
    was_training = model.training
    model.eval()
    try:
        with inference_layout(model) as layout, frozen_weights(model):
            for batch in loader:
                logits = model(layout(batch.x))
                if score == "el2n":
                    s = el2n(logits, batch.y)
                elif score == "entropy":
                    s = entropy(logits)
                else:
                    s = grand(logits, batch.y, hook.value, hook.layer.bias is not None)
                out[batch.idx.cpu()] = s.float().cpu()
                if progress is not None:
                    progress(len(batch.y))
    finally:
        if hook is not None:
            hook.close()
        model.train(was_training)
    missing = torch.isnan(out)
    if missing.any() and partial and not missing.all():
        out[missing] = out[~missing].mean()
    elif missing.any():
        raise ValueError("the loader did not cover every sample")
    return out
