"""Hutchinson estimates of Hessian traces, per parameter tensor, from probes
shared by every tensor.

One Rademacher probe v spans all trainable parameters; one double backward
gives Hv for all of them at once, and v_pᵀ(Hv)_p is an unbiased estimate of
the trace of parameter p's diagonal Hessian block. Summing the blocks gives
the whole-model estimate PyHessian's ``hessian(...).trace()`` returns for the
same seed: probes are drawn with ``randint_like`` per parameter in
``model.parameters()`` order, and its stopping rule is the one used for ``tol``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable

import torch
from torch import nn


@dataclass
class TraceSamples:
    """Per-probe, per-parameter-tensor samples v_pᵀ(Hv)_p."""

    names: list[str]         # trainable parameters, model.parameters() order
    samples: torch.Tensor    # [probes, len(names)], float64, CPU

    @property
    def probes(self) -> int:
        return self.samples.shape[0]

    def group(self, names: Iterable[str]) -> tuple[float, float | None]:
        """(mean, standard error) of the trace of the block spanned by ``names``."""
        idx = [self.names.index(n) for n in names]
        per_probe = self.samples[:, idx].sum(1)
        return _mean_se(per_probe)

    def total(self) -> tuple[float, float | None]:
        return _mean_se(self.samples.sum(1))


def _mean_se(x: torch.Tensor) -> tuple[float, float | None]:
    mean = x.mean().item()
    if x.numel() < 2:
        return mean, None
    return mean, x.std(unbiased=True).item() / math.sqrt(x.numel())


def _rademacher(p: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    return torch.randint_like(p, high=2, generator=gen) * 2 - 1


def hutchinson(model: nn.Module, loss_fn: Callable[[], torch.Tensor], *, probes: int = 64,
               tol: float | None = None, seed: int = 0) -> TraceSamples:
    """Sample Hessian traces of ``loss_fn()`` for every trainable parameter tensor.

    ``probes`` is the probe count, or the cap when ``tol`` is given: then
    sampling stops once the running mean of the total changes by less than
    ``tol`` relative to the previous mean (PyHessian's rule). The model's mode
    is left as it is: call ``model.eval()`` first for PyHessian's numbers.
    """
    if probes < 1:
        raise ValueError("probes must be at least 1")
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not named:
        raise ValueError("the model has no trainable parameters")
    names, params = [n for n, _ in named], [p for _, p in named]
    gen = torch.Generator(device=params[0].device).manual_seed(int(seed))
    with torch.enable_grad():
        loss = loss_fn()
        grads = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
        used = [i for i, g in enumerate(grads) if g is not None and g.requires_grad]
        rows, prev = [], 0.0
        for _ in range(probes):
            vs = [_rademacher(p, gen) for p in params]  # every tensor draws, as PyHessian's do
            hv = () if not used else torch.autograd.grad([grads[i] for i in used], [params[i] for i in used],
                                     grad_outputs=[vs[i] for i in used], retain_graph=True,
                                     allow_unused=True)
            row = torch.zeros(len(params), dtype=torch.float64)
            vals = [(h * vs[i]).sum() if h is not None else torch.zeros((), device=vs[i].device)
                    for i, h in zip(used, hv)]
            if vals:
                row[used] = torch.stack(vals).double().cpu()
            rows.append(row)
            if tol is not None:
                mean = torch.stack(rows).sum(1).mean().item()
                if abs(mean - prev) / (abs(prev) + 1e-6) < tol:
                    break
                prev = mean
    return TraceSamples(names, torch.stack(rows))
