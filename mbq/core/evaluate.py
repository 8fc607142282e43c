"""Accuracy of a model at any precision, and BN re-estimation."""
from __future__ import annotations

from typing import Iterable

import torch
from torch import nn
from torch.nn import functional as F

from ._layout import inference_layout
from .quant import frozen_weights


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, max_batches: int | None = None) -> dict[str, float]:
    """Top-1 (percent), mean loss and sample count over ``loader`` (Batch items)."""
    was_training = model.training
    model.eval()
    correct, loss, n = 0, 0.0, 0
    with inference_layout(model) as layout, frozen_weights(model):
        for i, batch in enumerate(loader):
            if max_batches is not None and i >= max_batches:
                break
            logits = model(layout(batch.x)).float()
            loss += F.cross_entropy(logits, batch.y, reduction="sum").item()
            correct += (logits.argmax(1) == batch.y).sum().item()
            n += len(batch.y)
    model.train(was_training)
    return {"top1": 100.0 * correct / max(n, 1), "loss": loss / max(n, 1), "n": n}


@torch.no_grad()
def predict(model: nn.Module, loader: Iterable) -> torch.Tensor:
    """Arg-max class of every sample, in loader order (CPU int64)."""
    model.eval()
    with inference_layout(model) as layout, frozen_weights(model):
        return torch.cat([model(layout(b.x)).argmax(1).cpu() for b in loader])


@torch.no_grad()
def recalibrate_bn(model: nn.Module, loader: Iterable, num_batches: int,
                   kinds: type | tuple = nn.modules.batchnorm._BatchNorm) -> int:
    """Re-estimate BatchNorm running statistics on ``num_batches`` batches.

    Statistics are reset and averaged cumulatively (momentum=None) so the
    result does not depend on the previous values. Only BNs of ``kinds`` are
    re-estimated; the others keep theirs and normalise with them, as in evaluation.
    Forward passes only, so they run in the evaluation's channels-last layout on the weights
    quantized once at entry (the widths set then). Returns batches used.
    """
    bns = [m for m in model.modules() if isinstance(m, kinds) and m.track_running_stats]
    others = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
              and m.track_running_stats and m not in bns]
    if not bns or num_batches <= 0:
        return 0
    saved = [(m, m.momentum) for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    was_training = model.training
    model.train()
    for m in others:
        m.eval()
    used = 0
    try:
        with inference_layout(model) as layout, frozen_weights(model):
            for i, batch in enumerate(loader):
                if i >= num_batches:
                    break
                model(layout(batch.x))
                used += 1
    finally:
        for m, mom in saved:
            m.momentum = mom
        model.train(was_training)
    return used
