"""BSQ baseline (Yang et al., ICLR 2021): bit-level sparsity with one trainable
tensor per bit plane — what MSQ's memory, parameter count and step time are
measured against on the same model.

Every quantized layer's weight becomes n planes (``quant.bitplane``); the
loss adds a group lasso over each layer's magnitude planes, weighted by the
layer's share of the model's bits; every ``requant_interval`` epochs the
planes are re-binarised and all-zero MSB/LSB planes dropped.
"""
from __future__ import annotations

import torch
from torch.nn import functional as F

from ..errors import MbqError
from ..quant import FP_BITS, compression_ratio, quantized_layers
from ..quant.bitplane import clamp_planes, group_lasso, plane_params, rebinarize, to_bit_planes
from .base import Method, Setting, accuracy


class BSQMethod(Method):
    name = "bsq"

    def __init__(self, cfg, opts):
        super().__init__(cfg, opts)
        if cfg.model.init is not None:
            raise MbqError("--method bsq trains from scratch: its weights are bit planes, so --init "
                           "float weights do not apply (drop --init)")
        act = FP_BITS if cfg.act_bits == "same" else cfg.act_bits_for(opts.init_bits)
        # every conv/linear becomes planes, first and last included (as msq prunes them)
        cfg.quant = cfg.quant.model_copy(update={"weight": "roundclamp", "w_bits": opts.init_bits,
                                                 "a_bits": act, "first_last_bits": opts.init_bits})
        self.history: list[dict] = []

    def quant_config(self):
        return self.cfg.quant

    def build_model(self):
        model = super().build_model()
        for _, m in quantized_layers(model):
            to_bit_planes(m, self.opts.init_bits)
            if m.pinned:
                m.set_precision(a=FP_BITS)  # the image and the logits' input stay float
        return model

    def eval_settings(self) -> list[Setting]:
        return [Setting(None, None)]

    def supports_bits(self, w: int) -> bool:
        return False  # the planes encode one scheme; there is no other width to switch to

    def setup(self, ctx) -> None:
        self._layers = quantized_layers(ctx.model)
        self._sizes = {n: plane_params(m)[1].numel() for n, m in self._layers}
        self._total = sum(self._sizes.values())

    def train_step(self, ctx, batch) -> dict[str, float]:
        for _, m in self._layers:
            clamp_planes(m)  # after the previous optimizer step
        with ctx.autocast():
            logits = ctx.model(batch.x)
            ce = F.cross_entropy(logits, batch.y)
        reg = self._group_lasso()
        ctx.backward(ce + self.opts.group_lasso * reg if self.opts.group_lasso > 0 else ce)
        return {"loss": ce.item(), "acc": accuracy(logits.detach(), batch.y), "n": len(batch.y),
                "group_lasso": reg.item()}

    def _group_lasso(self) -> torch.Tensor:
        """Σ_l (N_l·n_l / N_total) Σ_b ||P_l,b||₂ (BSQ's memory-weighted group lasso)."""
        terms = [group_lasso(m) * (self._sizes[n] * m.bits[0] / self._total) for n, m in self._layers]
        return torch.stack(terms).sum()

    def end_epoch(self, ctx, epoch: int) -> dict:
        e = epoch + 1
        if e % self.opts.requant_interval == 0:
            changed = []
            for n, m in self._layers:
                clamp_planes(m)
                before, after = rebinarize(m, self.opts.min_bits)
                for p in plane_params(m)[:2]:
                    ctx.optimizer.state.pop(p, None)  # momentum of the continuous planes is stale
                if after != before:
                    changed.append(f"{n} {before}->{after}")
                    self.history.append({"epoch": e, "layer": n, "before": before, "after": after})
            if changed:
                ctx.report("log", message=f"bsq epoch {e}: planes dropped: {', '.join(changed)}")
        c = compression_ratio(ctx.model)
        return {"compression": c, "avg_bits": FP_BITS / c}

    def state_dict(self) -> dict:
        return {"history": list(self.history)}

    def load_state_dict(self, state: dict) -> None:
        self.history = list(state.get("history", []))

    def metadata(self, ctx) -> dict:
        return {"mbq.plane_history": self.history}
