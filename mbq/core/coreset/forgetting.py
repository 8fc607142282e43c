"""Forgetting events (Toneva et al., ICLR 2019), counted per sample during training.

A forgetting event is a presentation at which a sample is misclassified
after having been classified correctly at its previous presentation.
Samples never learned rank above every learned one.
"""
from __future__ import annotations

import torch


class ForgettingTracker:
    def __init__(self, n: int):
        self.count = torch.zeros(n, dtype=torch.int32)
        self.last = torch.zeros(n, dtype=torch.bool)      # correct at the previous presentation
        self.learned = torch.zeros(n, dtype=torch.bool)   # ever correct

    @torch.no_grad()
    def update(self, idx: torch.Tensor, correct: torch.Tensor) -> None:
        idx, correct = idx.cpu(), correct.cpu().bool()
        self.count[idx] += (self.last[idx] & ~correct).int()
        self.last[idx] = correct
        self.learned[idx] |= correct

    def scores(self) -> torch.Tensor:
        s = self.count.float()
        never = ~self.learned
        if never.any():
            s[never] = s.max() + 1.0
        return s

    def state_dict(self) -> dict:
        return {"count": self.count.clone(), "last": self.last.clone(), "learned": self.learned.clone()}

    def load_state_dict(self, state: dict) -> None:
        self.count, self.last, self.learned = (state[k].clone() for k in ("count", "last", "learned"))
