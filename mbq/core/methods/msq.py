"""MSQ (Han et al., ICCV 2025): mixed precision found during training by
sparsifying the least significant bits of RoundClamp-quantized weights.

Each layer keeps one float tensor; its k LSBs at n bits are computed on the
fly (``lsb_residual``) and pushed to zero by R = Σ|L_k| / N_total. Every
``prune_interval`` epochs layers whose LSB non-zero rate is under α lose k
bits (k from the Hessian sensitivity Ω); a forced sorted round at the
deadline meets the target; after that it is plain QAT at the frozen scheme.
The readings chosen where the paper is silent are in docs/msq.md.
"""
from __future__ import annotations

import math

import torch
from torch.nn import functional as F

from ..bitprune import LayerBits, compression, forced_round, lsb_nonzero_rate, max_compression, msq_round
from ..errors import MbqError
from ..quant import FP_BITS, compression_ratio, quantized_layers, weight_layers
from ..quant.functional import lsb_penalty
from ..sensitivity import hessian_batch, layer_sensitivity
from .base import Method, Setting, accuracy

_TOL = 1e-9  # compression targets are compared as floats


class MSQMethod(Method):
    name = "msq"

    def __init__(self, cfg, opts):
        super().__init__(cfg, opts)
        act = FP_BITS if cfg.act_bits == "same" else cfg.act_bits_for(opts.init_bits)
        first_last = opts.init_bits if opts.prune_first_last else cfg.quant.first_last_bits
        # written back into the config so a rebuilt model (eval, qat --init) has the same layers
        cfg.quant = cfg.quant.model_copy(update={"weight": "roundclamp", "w_scale": opts.weight_scale,
                                                 "w_bits": opts.init_bits, "a_bits": act,
                                                 "first_last_bits": first_last})
        self.k: dict[str, int] = {}
        self.omega: dict[str, float] = {}
        self.history: list[dict] = []
        self.reached = False
        self.reached_epoch: int | None = None
        self._resumed = False
        self._model = None

    # --- model -------------------------------------------------------------------
    def quant_config(self):
        return self.cfg.quant

    def build_model(self):
        model = super().build_model()
        for _, m in quantized_layers(model):
            if m.pinned:
                m.set_precision(a=FP_BITS)  # the image and the logits' input stay float
        return model

    def trained_bits(self) -> list[int]:
        if self._model is None:
            return [self.opts.init_bits]
        return sorted({m.bits[0] for _, m in self._prunable(self._model)})

    def eval_settings(self) -> list[Setting]:
        return [Setting(None, None)]  # the per-layer scheme in the model

    def supports_bits(self, w: int) -> bool:
        return 2 <= w <= 8 or w >= FP_BITS  # RoundClamp has no 1-bit form

    def _prunable(self, model):
        return quantized_layers(model, include_pinned=self.opts.prune_first_last)

    def _layer_bits(self) -> list[LayerBits]:
        prunable = {n for n, _ in self._layers}
        return [LayerBits(n, m.weight.numel(), m.bits[0] if hasattr(m, "bits") else FP_BITS, n in prunable)
                for n, m in weight_layers(self._model)]

    # --- training -----------------------------------------------------------------
    def setup(self, ctx) -> None:
        o = self.opts
        self._model = ctx.model
        self._layers = self._prunable(ctx.model)
        if not self._layers:
            raise MbqError(f"msq: {ctx.cfg.model.arch} has no layer to prune")
        if not self._resumed:  # an --init checkpoint may carry other widths
            for _, m in self._layers:
                m.set_precision(o.init_bits)
        self._n_total = sum(m.weight.numel() for _, m in self._layers)
        cmax = max_compression(self._layer_bits(), o.min_bits)
        if o.target_compression > cmax + _TOL:
            raise MbqError(f"--target-compression {o.target_compression:g} is out of reach: with "
                           f"--min-bits {o.min_bits} this model compresses at most {cmax:.2f}x")
        now = compression_ratio(ctx.model)
        if not self._resumed and now < o.target_compression - _TOL and ctx.cfg.epochs < 2:
            raise MbqError(f"msq needs --epochs 2 or more to reach --target-compression "
                           f"{o.target_compression:g}: the pruned scheme trains in the epochs after "
                           "the last pruning round")
        self._hx, self._hy = hessian_batch(ctx.train_set, o.hessian_batches, ctx.cfg.data.batch_size,
                                           ctx.cfg.seed + 7717, ctx.device)
        ctx.report("log", message=f"msq: {len(self._layers)} layers at {o.init_bits} bits, compression "
                                  f"{now:.2f}x, target {o.target_compression:g}x (reachable {cmax:.2f}x)")
        if not self._resumed:
            self.reached = now >= o.target_compression - _TOL
            if not self.reached:
                self._update_k(ctx, 0)

    def _update_k(self, ctx, epoch: int) -> None:
        o = self.opts
        stats = layer_sensitivity(ctx.model, self._hx, self._hy, self._layers, probes=o.hessian_probes,
                                  seed=ctx.cfg.seed + epoch, min_bits=o.min_bits, guided=o.hessian,
                                  k_sensitive=o.k_sensitive, k_insensitive=o.k_insensitive,
                                  uniform_k=o.uniform_k)
        self.k = {r["name"]: r["k"] for r in stats["layers"]}
        self.omega = {r["name"]: r["omega"] for r in stats["layers"]}

    def train_step(self, ctx, batch) -> dict[str, float]:
        with ctx.autocast():
            logits = ctx.model(batch.x)
            ce = F.cross_entropy(logits, batch.y)
        lam = 0.0 if self.reached else self.opts.lsb_lambda
        reg = self._lsb_reg() if lam > 0 else None
        ctx.backward(ce + lam * reg if reg is not None else ce)
        return {"loss": ce.item(), "acc": accuracy(logits.detach(), batch.y), "n": len(batch.y),
                "lsb_reg": reg.item() if reg is not None else 0.0}

    def _lsb_reg(self) -> torch.Tensor | None:
        """R = Σ_layers Σ_i |L_k,i| / N_total; its gradient is sign(L_k) / N_total."""
        terms = [lsb_penalty(m.weight, m.bits[0], self.k[n], m.weight_quant.scale(m.weight))
                 for n, m in self._layers if self.k.get(n, 0) > 0]
        return torch.stack(terms).sum() / self._n_total if terms else None

    def end_epoch(self, ctx, epoch: int) -> dict:
        o, e = self.opts, epoch + 1
        out = {}
        if not self.reached:
            rates = self._rates()
            if rates:  # parameter-weighted mean, to watch the regularizer work
                sizes = dict((n, m.weight.numel()) for n, m in self._layers)
                out["lsb_rate"] = sum(r * sizes[n] for n, r in rates.items()) / sum(sizes[n] for n in rates)
            forced = e >= self.deadline_epoch(ctx.cfg.epochs)
            if forced or e % o.prune_interval == 0:
                self._prune_round(ctx, e, forced, rates)
        c = compression_ratio(ctx.model)
        return dict(out, compression=c, avg_bits=FP_BITS / c,
                    lsb_lambda=0.0 if self.reached else o.lsb_lambda)

    def deadline_epoch(self, epochs: int) -> int:
        """The epoch whose end holds the forced round: ceil(deadline * epochs), but never
        the last epoch of a longer run, so the frozen scheme always trains afterwards
        (at 2 epochs the deadline fell on the end of the run: 28.9% top-1 on cnn)."""
        return min(max(1, math.ceil(self.opts.prune_deadline * epochs - _TOL)), max(1, epochs - 1))

    def _rates(self) -> dict[str, float]:
        """LSB non-zero rate of each layer at its current k."""
        return {n: lsb_nonzero_rate(m.weight, m.bits[0], self.k[n], m.weight_quant.scale(m.weight))
                for n, m in self._layers if self.k.get(n, 0) > 0}

    def _prune_round(self, ctx, e: int, forced: bool, rates: dict[str, float]) -> None:
        o = self.opts
        layers = self._layer_bits()
        if forced:
            bits, events = forced_round(layers, self.k, rates, o.target_compression, o.min_bits)
        else:
            bits, events = msq_round(layers, self.k, rates, o.prune_threshold, o.target_compression)
        for n, m in self._layers:
            if bits[n] != m.bits[0]:
                m.set_precision(bits[n])
        c = compression(layers, bits)
        self.reached = c >= o.target_compression - _TOL
        kind = "deadline" if forced else ("final" if self.reached else "interval")
        for ev in events:
            self.history.append({"epoch": e, "layer": ev.layer, "before": ev.before, "after": ev.after,
                                 "omega": self.omega.get(ev.layer), "rate": rates.get(ev.layer),
                                 "round": kind})
        if events:
            changed = ", ".join(f"{ev.layer} {ev.before}->{ev.after}" for ev in events)
            scheme = " ".join(str(m.bits[0]) for _, m in self._layers)
            ctx.report("log", message=f"msq epoch {e}: {kind} round, compression {c:.2f}x: {changed}; "
                                      f"bits [{scheme}]")
        if self.reached:
            self.reached_epoch = e
            ctx.report("log", message=f"msq: target {o.target_compression:g}x reached at epoch {e}; "
                                      "the scheme is frozen, QAT continues without the regularizer")
        else:
            self._update_k(ctx, e)

    # --- state ----------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"k": dict(self.k), "omega": dict(self.omega), "history": list(self.history),
                "reached": self.reached, "reached_epoch": self.reached_epoch or 0}

    def load_state_dict(self, state: dict) -> None:
        self.k, self.omega = dict(state["k"]), dict(state["omega"])
        self.history, self.reached = list(state["history"]), bool(state["reached"])
        self.reached_epoch = int(state["reached_epoch"]) or None
        self._resumed = True

    def metadata(self, ctx) -> dict:
        return {"mbq.prune_history": self.history,
                "mbq.msq": {"target_compression": self.opts.target_compression,
                            "reached_epoch": self.reached_epoch, "k": self.k,
                            "compression": compression_ratio(ctx.model)}}
