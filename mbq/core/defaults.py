"""Defaults that follow the run's shape. Torch-free.

A method states its learning rate at :data:`REF_BATCH` images per gradient;
``mbq train`` scales it to the run's batch (linearly for SGD, by the square
root for Adam/AdamW, or by the method's own rule) unless ``--lr`` is given.
"""
from __future__ import annotations

REF_BATCH = 128
SGD_LR = 0.1  # OptimConfig's default
ADAM_LR = 1e-3  # Adam/AdamW with no LR of the method's
# no-grad passes (test, scoring, BN re-estimation): on CPU a batch of 128 ran resnet20
# forward 1.1-1.3 ms/image against 1.6-1.8 at 256 (activations leave the cache)
EVAL_BATCH = 128


def lr_for_batch(lr: float, optimizer: str, batch: int, ref: int = REF_BATCH,
                 rule: str | None = None) -> float:
    """``rule``: "linear" or "sqrt"; None picks by optimizer (linear for SGD, sqrt for Adam)."""
    r = batch / ref
    rule = rule or ("linear" if optimizer == "sgd" else "sqrt")
    return lr * (r if rule == "linear" else r ** 0.5)
