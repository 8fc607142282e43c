"""QAT at one dedicated width (``--bits 4 --act-bits same``), or at the
per-layer scheme of an ``--init`` checkpoint (e.g. from ``mbq prune``)."""
from __future__ import annotations

from ..config import QuantConfig
from ..errors import MbqError
from ..quant import set_bit_scheme
from .base import Method, Setting, accuracy


class QATMethod(Method):
    name = "qat"

    def __init__(self, cfg, opts):
        super().__init__(cfg, opts)
        if len(cfg.bits) != 1:
            raise MbqError(f"--method qat trains one width; got --bits {','.join(map(str, cfg.bits))}"
                           " (use --method emq/anyprec/mebqat for several)")

    def quant_config(self) -> QuantConfig:
        w = self.cfg.bits[0]
        q = self.cfg.quant.model_copy(update={"w_bits": w, "a_bits": self.cfg.act_bits_for(w)})
        if w == 1 and q.weight != "dorefa":
            raise MbqError(f"the {q.weight} weight quantizer has no 1-bit form; use --quantizer dorefa")
        return q

    def build_model(self):
        model = super().build_model()
        if self.opts.scheme:
            set_bit_scheme(model, self.opts.scheme)
        return model

    def adopt_init(self, meta: dict) -> None:
        scheme = meta.get("mbq.bit_scheme") or {}
        widths = {(v["w"], v["a"]) for v in scheme.values()}
        searched = "mbq.prune_history" in meta  # msq / mbq prune output, even if it ended uniform
        if len(widths) > 1 or (searched and scheme):  # a mixed scheme: fine-tune at it, same quantizers
            self.opts.scheme = scheme
            self.cfg.options["scheme"] = scheme
            q = (meta.get("mbq.config") or {}).get("quant") or {}
            keep = {k: q[k] for k in ("weight", "w_scale", "act", "first_last_bits", "fp_path") if k in q}
            self.cfg.quant = self.cfg.quant.model_copy(update=keep)

    def train_step(self, ctx, batch) -> dict[str, float]:
        loss, logits = self.ce_step(ctx, ctx.model, batch)
        return {"loss": loss.item(), "acc": accuracy(logits, batch.y), "n": len(batch.y)}

    def eval_settings(self) -> list[Setting]:
        if self.opts.scheme:
            return [Setting(None, None)]
        w = self.cfg.bits[0]
        return [Setting(w, self.cfg.act_bits_for(w))]
