"""Any-Precision DNN (Yu et al., AAAI 2021), the baseline EMQ is measured against.

Switchable BatchNorm (one BN per trained width), every width on every
mini-batch, cross-entropy at every width (``--kd recursive``: the paper's
distillation from the next-higher width), one optimizer step. A width it never
trained borrows the BN of the nearest trained width, whose statistics are
re-estimated on training batches for the evaluation and put back at the next
``apply_setting`` (so evaluating never changes what a checkpoint holds).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ..evaluate import recalibrate_bn
from ..quant import SwitchableBatchNorm2d, set_bits
from ..quant.convert import quantized_layers
from ._multibit import MultiBitMethod, _bits_text, soft_cross_entropy
from .base import Setting, accuracy


def _nearest(trained: list[int], w: int) -> int:
    # the same choice as SwitchableBatchNorm2d.add_width: closest, the wider on a tie
    return min(trained, key=lambda b: (abs(b - w), -b))


class _BNStats:
    """A copy of every switchable BN's running statistics, to put back later."""

    def __init__(self, model: nn.Module):
        self.saved = [(bn, {k: v.clone() for k, v in bn.state_dict().items() if k.startswith("running")
                            or k == "num_batches_tracked"})
                      for m in model.modules() if isinstance(m, SwitchableBatchNorm2d)
                      for bn in m.bns.values()]

    @torch.no_grad()
    def restore(self) -> None:
        for bn, state in self.saved:
            for k, v in state.items():
                getattr(bn, k).copy_(v)


class AnyPrecMethod(MultiBitMethod):
    name = "anyprec"

    def __init__(self, cfg, opts):
        super().__init__(cfg, opts)
        self._borrowed: _BNStats | None = None

    def quant_config(self):
        return self._quant(wbc=False, switchable_bn=sorted(self.cfg.bits))

    # --- training ----------------------------------------------------------------------
    def train_step(self, ctx, batch) -> dict[str, float]:
        model = ctx.model
        stats: dict[str, float] = {}
        teacher = None
        tot_loss = tot_acc = 0.0
        for b in self.bits_desc:
            set_bits(model, b, self.cfg.act_bits_for(b))
            with ctx.autocast():
                logits = model(batch.x)
                if teacher is None or self.opts.kd == "none":
                    loss = F.cross_entropy(logits, batch.y)
                else:
                    loss = soft_cross_entropy(logits, teacher)
            ctx.backward(loss)
            teacher = logits.detach()
            acc = accuracy(teacher, batch.y)
            stats[f"loss_{b}"], stats[f"acc_{b}"] = loss.item(), acc
            tot_loss += stats[f"loss_{b}"]
            tot_acc += acc
        k = len(self.bits_desc)
        return dict(stats, loss=tot_loss / k, acc=tot_acc / k, n=len(batch.y) * k)

    # --- evaluation ------------------------------------------------------------------------
    def apply_setting(self, model: nn.Module, s: Setting) -> None:
        if self._borrowed is not None:  # put back what the last untrained width changed
            self._borrowed.restore()
            self._borrowed = None
        if s.w is None or s.w in self.cfg.bits:
            super().apply_setting(model, s)
            return
        self._borrowed = _BNStats(model)
        for _, m in quantized_layers(model, include_pinned=False):
            m.set_precision(s.w, s.a)
        near = _nearest(list(self.cfg.bits), s.w)
        for m in model.modules():
            if isinstance(m, SwitchableBatchNorm2d):
                m.set_active(near)

    def prepare_eval(self, model: nn.Module, s: Setting, calib, recalibrated: int = 0) -> str | None:
        if s.w is None or s.w in self.cfg.bits:
            return None
        if recalibrated:
            return (f"anyprec: width {_bits_text([s.w])} was not trained; evaluated with the "
                    f"{_bits_text([_nearest(list(self.cfg.bits), s.w)])}-bit BatchNorm re-calibrated on "
                    f"{recalibrated} training batches (--recalibrate-bn)")
        if calib is None:
            return (f"anyprec: width {_bits_text([s.w])} was not trained and no calibration data was "
                    f"given; it uses the {_bits_text([_nearest(list(self.cfg.bits), s.w)])}-bit BN as is")
        used = recalibrate_bn(model, calib, self.opts.calib_batches)
        near = _nearest(list(self.cfg.bits), s.w)
        return (f"anyprec: width {_bits_text([s.w])} was not trained (trained: "
                f"{_bits_text(sorted(self.cfg.bits))}); evaluated with the {_bits_text([near])}-bit "
                f"BatchNorm re-calibrated on {used} training batches")
