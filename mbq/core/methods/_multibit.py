"""What the multi-bit methods (emq, anyprec) share: the quantizer set-up,
the widths they may be evaluated at, and the distillation loss."""
from __future__ import annotations

import torch

from ..config import QuantConfig
from ..errors import MbqError
from ..quant import FP_BITS, VALID_BITS
from ..quant.quantizers import WEIGHT_QUANTIZERS
from .base import Method, Setting

ALL_EVAL_BITS = (1, 2, 3, 4, 5, 6, 7, 8, FP_BITS)


def soft_cross_entropy(logits: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against the teacher's softmax (teacher detached)."""
    target = teacher.detach().float().softmax(1)
    return -(target * logits.float().log_softmax(1)).sum(1).mean()


def _bits_text(bits) -> str:
    return ",".join("fp" if b >= FP_BITS else str(b) for b in bits)


class MultiBitMethod(Method):
    """One network, every width sharing its weights; subclasses train it."""

    def __init__(self, cfg, opts):
        super().__init__(cfg, opts)
        one_bit = WEIGHT_QUANTIZERS[cfg.quant.weight].supports_1bit
        if 1 in cfg.bits and not one_bit:
            raise MbqError(f"--bits {_bits_text(cfg.bits)}: the {cfg.quant.weight} weight quantizer has "
                           "no 1-bit form; drop 1 or use --quantizer dorefa")
        if isinstance(opts.eval_bits, list):
            bad = [b for b in opts.eval_bits if not self.supports_bits(b)]
            if bad:
                raise MbqError(f"--eval-bits {_bits_text(bad)}: not available with the "
                               f"{cfg.quant.weight} quantizer")

    @property
    def bits_desc(self) -> list[int]:
        """Trained widths, highest first (the order children are stepped in)."""
        return sorted(self.cfg.bits, reverse=True)

    def _quant(self, **update) -> QuantConfig:
        q = self.cfg.quant
        return q.model_copy(update=dict(update, fp_path=self.opts.fp_path,
                                        w_bits=max(self.cfg.bits),
                                        a_bits=self.cfg.act_bits_for(max(self.cfg.bits))))

    def supports_bits(self, w: int) -> bool:
        if w not in VALID_BITS:
            return False
        return w != 1 or WEIGHT_QUANTIZERS[self.cfg.quant.weight].supports_1bit

    def _eval_widths(self) -> list[int]:
        eb = self.opts.eval_bits
        if eb == "trained":
            rest = list(self.cfg.bits)
        elif eb == "all":
            rest = [b for b in ALL_EVAL_BITS if self.supports_bits(b)]
        else:
            rest = list(eb)
        top = max(self.cfg.bits)  # checkpoints are saved at the highest trained width
        return [top] + sorted(b for b in rest if b != top)

    def eval_settings(self) -> list[Setting]:
        return [Setting(b, self.cfg.act_bits_for(b)) for b in self._eval_widths()]
