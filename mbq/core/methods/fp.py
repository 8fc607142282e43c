"""Float training: the reference every method is compared with."""
from __future__ import annotations

from ..quant import FP_BITS
from .base import Method, Setting, accuracy


class FPMethod(Method):
    name = "fp"

    def trained_bits(self) -> list[int]:
        return [FP_BITS]

    def eval_settings(self) -> list[Setting]:
        return [Setting(FP_BITS, FP_BITS)]

    def apply_setting(self, model, s: Setting) -> None:
        pass  # a float model has one precision

    def supports_bits(self, w: int) -> bool:
        return w == FP_BITS

    def train_step(self, ctx, batch) -> dict[str, float]:
        loss, logits = self.ce_step(ctx, ctx.model, batch)
        return {"loss": loss.item(), "acc": accuracy(logits, batch.y), "n": len(batch.y)}
