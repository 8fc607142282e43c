"""First-order MAML (Finn et al., 2017): adapt a copy of the weights on the
support set with a few SGD steps, then take the query-loss gradient at the
adapted weights as the meta-gradient of the shared ones (no second order)."""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ..quant import QUANT_LAYERS
from .episodes import EpisodeData


def adaptable(model: nn.Module) -> list[torch.nn.Parameter]:
    """Parameters the inner loop updates: all but the BatchNorm shifts (beta is frozen)."""
    frozen = {id(m.bias) for m in model.modules()
              if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.bias is not None}
    return [p for p in model.parameters() if p.requires_grad and id(p) not in frozen]


def load_weights(fast: nn.Module, model: nn.Module) -> nn.Module:
    """Reset ``fast`` (a structural copy of ``model``) to ``model``'s current state."""
    with torch.no_grad():
        for d, s in zip(fast.parameters(), model.parameters()):
            d.copy_(s)
        for d, s in zip(fast.buffers(), model.buffers()):
            d.copy_(s)
    for m_fast, m in zip(fast.modules(), model.modules()):
        if isinstance(m, QUANT_LAYERS):
            m_fast.set_precision(*m.bits)  # keeps the Python-int mirror in step
    return fast


def adapt(fast: nn.Module, ep: EpisodeData, steps: int, lr: float) -> nn.Module:
    """``steps`` plain SGD steps on the support loss, in place on ``fast``."""
    params = adaptable(fast)
    with torch.enable_grad():
        for _ in range(steps):
            loss = F.cross_entropy(fast(ep.xs), ep.ys)
            grads = torch.autograd.grad(loss, params, allow_unused=True)
            with torch.no_grad():
                for p, g in zip(params, grads):
                    if g is not None:
                        p.add_(g, alpha=-lr)
    return fast


def query_loss(fast: nn.Module, ep: EpisodeData) -> tuple[torch.Tensor, torch.Tensor]:
    """(query cross-entropy, query logits) at the adapted weights."""
    logits = fast(ep.xq)
    return F.cross_entropy(logits, ep.yq), logits


def episode_accuracy(model: nn.Module, fast: nn.Module, ep: EpisodeData, steps: int, lr: float) -> float:
    """Adapt a copy of ``model`` on the support set, then score the query set."""
    adapt(load_weights(fast, model), ep, steps, lr)
    with torch.no_grad():
        logits = fast(ep.xq)
    return (logits.argmax(1) == ep.yq).float().mean().item() * 100.0
