"""MEBQAT-MAML: first-order MAML where every episode of a meta-batch gets its
own random (w, a) pair; the inner loop runs with the network quantized at that
pair, and the outer gradients are averaged per parameter and clamped."""
from __future__ import annotations

from .fomaml import FOMAMLMethod


class MEBQATMAMLMethod(FOMAMLMethod):
    name = "mebqat-maml"
    policy = "sampled"
