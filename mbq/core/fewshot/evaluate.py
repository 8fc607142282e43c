"""Few-shot evaluation: mean query accuracy over test episodes with a 95% CI."""
from __future__ import annotations

import math
from typing import Callable

import torch

from .episodes import EpisodeData, EpisodeSampler, generator, load_episode

EpisodeScore = Callable[[torch.nn.Module, EpisodeData], float]


def mean_ci95(accs: list[float]) -> tuple[float, float]:
    """(mean, half-width of the normal 95% interval: 1.96 * sd / sqrt(n))."""
    n = len(accs)
    if n == 0:
        return float("nan"), float("nan")
    mean = sum(accs) / n
    if n == 1:
        return mean, float("nan")
    var = sum((a - mean) ** 2 for a in accs) / (n - 1)
    return mean, 1.96 * math.sqrt(var / n)


def run_episodes(model: torch.nn.Module, dataset, sampler: EpisodeSampler, episodes: int,
                 seed: int, score: EpisodeScore, device) -> dict:
    """Score ``episodes`` episodes; the same ``seed`` gives the same episodes (so every
    bit-width pair of a checkpoint is measured on identical tasks)."""
    g = generator(seed, "fewshot-eval")
    accs = []
    was_training = model.training
    model.eval()
    try:
        for _ in range(episodes):
            ep = load_episode(dataset, sampler.sample(g), device)
            accs.append(score(model, ep))
    finally:
        model.train(was_training)
    mean, ci = mean_ci95(accs)
    return {"top1": mean, "ci95": ci, "episodes": len(accs)}


def evaluate_settings(method, model: torch.nn.Module, dataset, settings, *, episodes: int | None,
                      ways: int | None, shots: int | None, queries: int | None, seed: int,
                      device) -> list[dict]:
    """One row per setting for ``mbq eval`` of a few-shot checkpoint; episode shape
    defaults to the one it was trained with, the count to its ``--test-episodes``."""
    from ..quant import compression_ratio

    o = method.opts
    episodes = episodes or o.test_episodes
    ways, shots, queries = ways or o.ways, shots or o.shots, queries or o.queries
    rows = []
    for s in settings:
        r = method.evaluate_episodes(model, dataset, (s.w, s.a), episodes=episodes, ways=ways,
                                     shots=shots, queries=queries, seed=seed, device=device)
        rows.append({"label": s.label, "bits": s.w if s.w == s.a else s.label, "w": s.w, "a": s.a,
                     "top1": r["top1"], "ci95": r["ci95"], "episodes": r["episodes"], "ways": ways,
                     "shots": shots, "queries": queries, "compression": compression_ratio(model)})
    return rows
