"""Prototypical networks (Snell et al., 2017): class means of support embeddings,
logits = -squared Euclidean distance of each query embedding to each prototype."""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .episodes import EpisodeData


def prototypes(emb: torch.Tensor, y: torch.Tensor, ways: int) -> torch.Tensor:
    """[ways, D] class means of ``emb`` [N, D] under labels ``y`` in 0..ways-1."""
    sums = emb.new_zeros(ways, emb.shape[1]).index_add_(0, y, emb)
    counts = torch.bincount(y, minlength=ways).clamp_min(1).to(emb.dtype)
    return sums / counts[:, None]


def proto_logits(query: torch.Tensor, protos: torch.Tensor) -> torch.Tensor:
    """[Q, ways] negative squared distances."""
    return -(query[:, None, :] - protos[None, :, :]).pow(2).sum(-1)


def episode_logits(model: nn.Module, ep: EpisodeData) -> torch.Tensor:
    """Embed support and query in one pass (one set of batch statistics), classify the query."""
    emb = model(torch.cat([ep.xs, ep.xq])).flatten(1).float()
    n = len(ep.xs)
    return proto_logits(emb[n:], prototypes(emb[:n], ep.ys, ep.ways))


def episode_loss(model: nn.Module, ep: EpisodeData) -> tuple[torch.Tensor, torch.Tensor]:
    """(query cross-entropy, query logits)."""
    logits = episode_logits(model, ep)
    return F.cross_entropy(logits, ep.yq), logits


@torch.no_grad()
def episode_accuracy(model: nn.Module, ep: EpisodeData) -> float:
    return (episode_logits(model, ep).argmax(1) == ep.yq).float().mean().item() * 100.0
