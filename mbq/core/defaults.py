"""Defaults that follow the run's shape. Torch-free.

A method states its learning rate at :data:`REF_BATCH` images per gradient;
``mbq train`` scales it to the run's batch (linearly for SGD, by the square
root for Adam/AdamW, or by the method's own rule) unless ``--lr`` is given.
A method whose rule scales its step up with the batch may also warm it up there
(:data:`LARGE_BATCH_WARMUP`, through its options' ``run_defaults``).
"""
from __future__ import annotations

REF_BATCH = 128
SGD_LR = 0.1  # OptimConfig's default
ADAM_LR = 1e-3  # Adam/AdamW with no LR of the method's
# no-grad passes (test, scoring, BN re-estimation): on CPU a batch of 128 ran resnet20
# forward 1.1-1.3 ms/image against 1.6-1.8 at 256 (activations leave the cache)
EVAL_BATCH = 128


# warm-up, as a fraction of the run, of a method whose step grows linearly above REF_BATCH
LARGE_BATCH_WARMUP = 0.1
LR_RULES = ("linear", "sqrt", "sqrt_above")


def lr_for_batch(lr: float, optimizer: str, batch: int, ref: int = REF_BATCH,
                 rule: str | None = None) -> float:
    """``rule``: "linear", "sqrt", or "sqrt_above" (linear up to ``ref``, the square root above
    it); None picks by optimizer (linear for SGD, sqrt for Adam)."""
    r = batch / ref
    rule = rule or ("linear" if optimizer == "sgd" else "sqrt")
    if rule not in LR_RULES:
        raise ValueError(f"unknown LR batch rule {rule!r}")
    if rule == "sqrt_above":
        rule = "linear" if r <= 1 else "sqrt"
    return lr * r if rule == "linear" else lr * r ** 0.5
