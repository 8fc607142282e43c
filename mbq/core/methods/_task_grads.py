"""Per-parameter averaging of task gradients (MEBQAT / its few-shot variants).

Each task's gradient is added with a count of the elements it actually
reached: a parameter a task never used (a quantizer's clip or step at FP, or
LSQ's step for another width) does not dilute the average of the tasks that
did use it.
"""
from __future__ import annotations

import torch
from torch import nn

from ..quant import QUANT_LAYERS, is_fp
from ..quant.quantizers import LSQAct, LSQWeight


def usage_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """Element masks for parameters used only in part at the model's current widths.

    LSQ keeps one step per width and a task reads only the entry of its own
    width; every other parameter either gets a gradient as a whole or none.
    """
    masks: dict[str, torch.Tensor] = {}
    for name, m in model.named_modules():
        if not isinstance(m, QUANT_LAYERS):
            continue
        for q, bits, attr in ((m.weight_quant, m.bits[0], "weight_quant"),
                              (m.act_quant, m.bits[1], "act_quant")):
            if isinstance(q, (LSQWeight, LSQAct)):
                mask = torch.zeros_like(q.step)
                if not is_fp(bits):
                    mask[bits] = 1.0
                masks[f"{name}.{attr}.step" if name else f"{attr}.step"] = mask
    return masks


class TaskGradients:
    """Sums of task gradients and the number of tasks behind each element."""

    def __init__(self, model: nn.Module):
        self.params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, torch.Tensor | float] = {}
        self.tasks = 0

    def add(self, grads: dict[str, torch.Tensor | None], masks: dict[str, torch.Tensor]) -> None:
        """One task's gradients by parameter name (None = the task did not reach it)."""
        self.tasks += 1
        for n, g in grads.items():
            if g is None or n not in self.params:
                continue
            mask = masks.get(n)
            g = g.detach() if mask is None else g.detach() * mask
            if n in self.sums:
                self.sums[n] += g
                self.counts[n] = self.counts[n] + (1.0 if mask is None else mask)
            else:
                self.sums[n] = g.clone()
                self.counts[n] = 1.0 if mask is None else mask.clone()

    def add_from_grads(self, model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
        """Take the ``.grad`` a backward left on ``model`` as one task, and clear it."""
        grads = {}
        for n, p in model.named_parameters():
            grads[n] = p.grad
            p.grad = None
        self.add(grads, masks)

    def write(self) -> None:
        """Set each parameter's ``.grad`` to its average over the tasks that reached it."""
        for n, p in self.params.items():
            if n not in self.sums:
                p.grad = None
                continue
            c = self.counts[n]
            avg = self.sums[n] / (c.clamp_min(1.0) if isinstance(c, torch.Tensor) else c)
            p.grad = avg.to(p.dtype)


def clamp_grads(model: nn.Module, limit: float) -> None:
    """Element-wise clamp of every gradient to ±limit."""
    for p in model.parameters():
        if p.grad is not None:
            p.grad.clamp_(-limit, limit)
