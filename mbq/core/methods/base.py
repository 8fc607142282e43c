"""The Method interface the engine drives. A method is a training recipe:
it builds its model from the quantization library, computes gradients for
a step, and may act at epoch ends; the engine owns everything else
(devices, optimizer, schedule, DDP, checkpoints, progress)."""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Iterable

import torch
from torch import nn
from torch.nn import functional as F

from ..config import QuantConfig, TrainConfig
from ..models import create_model
from ..quant import FP_BITS, set_bits


@dataclass(frozen=True)
class Setting:
    """One precision to evaluate at: weight and activation widths.

    ``w = a = None`` means the per-layer scheme stored in the model.
    """

    w: int | None
    a: int | None

    @property
    def label(self) -> str:
        if self.w is None:
            return "mixed"
        if self.w == self.a:
            return "fp" if self.w >= FP_BITS else str(self.w)
        return f"w{self.w}a{self.a}"


class Method(ABC):
    name = "base"

    def __init__(self, cfg: TrainConfig, opts):
        self.cfg, self.opts = cfg, opts

    # --- model ---------------------------------------------------------------
    def quant_config(self) -> QuantConfig | None:
        """How to quantize the architecture; None keeps it float."""
        return None

    def build_model(self) -> nn.Module:
        return self._create_model(self.cfg.model.num_classes)

    def _create_model(self, num_classes: int) -> nn.Module:
        """The architecture with ``num_classes`` outputs, quantized by ``quant_config``, to train."""
        mc = self.cfg.model
        model = create_model(mc.arch, num_classes=num_classes, in_channels=mc.in_channels,
                             image_size=mc.image_size, **mc.kwargs)
        q = self.quant_config()
        if q is not None:
            from ..quant import quantize_model, quantized_layers, redraw_zero_weight
            quantize_model(model, q, (mc.in_channels, mc.image_size, mc.image_size))
            for _, layer in quantized_layers(model):
                redraw_zero_weight(layer)  # a zero head quantizes to NaN
        return model

    def trained_bits(self) -> list[int]:
        return list(self.cfg.bits)

    def eval_settings(self) -> list[Setting]:
        """Precisions validated every epoch and tested at the end."""
        return [Setting(b, self.cfg.act_bits_for(b)) for b in self.trained_bits()]

    def val_settings(self) -> list[Setting]:
        """Precisions validated after each epoch: those tested at the end, unless a method says."""
        return self.eval_settings()

    def trained_labels(self) -> list[str]:
        """Labels of the evaluated settings the run trained (the health check judges these)."""
        trained = set(self.trained_bits())
        return [s.label for s in self.eval_settings() if s.w is None or s.w in trained]

    def chance_top1(self) -> float:
        """Top-1 (percent) of a model that guesses."""
        return 100.0 / self.cfg.model.num_classes

    def near_chance_advice(self) -> str | None:
        """What to try when a trained width ends near chance (the health check adds it)."""
        return None

    def divergence_advice(self) -> str:
        """What to try when the training loss becomes NaN or infinite."""
        return "Lower --lr or check the data."

    def training_accuracy_transfers(self) -> bool:
        """Whether the test top-1 should be near the training accuracy (the same classes);
        the health check flags a width testing under half of it."""
        return True

    def supports_bits(self, w: int) -> bool:
        """Whether ``mbq eval --bit w`` is meaningful for this model."""
        return True

    def supports_pair(self, w: int, a: int) -> bool:
        """Whether ``mbq eval --wbits w --abits a`` (or ``--pairs all``) may evaluate (w, a)."""
        return self.supports_bits(w)

    def apply_setting(self, model: nn.Module, s: Setting) -> None:
        if s.w is not None:
            set_bits(model, s.w, s.a)

    def adopt_init(self, meta: dict) -> None:
        """Called with the metadata of an mbq ``--init`` checkpoint before the model is built."""

    def prepare_eval(self, model: nn.Module, s: Setting, calib: Iterable | None,
                     recalibrated: int = 0) -> str | None:
        """Called after apply_setting before evaluating; may recalibrate. Returns a note.

        ``recalibrated``: the caller has just re-estimated every BN on that many batches
        (``mbq eval --recalibrate-bn N``); a method must not re-estimate again.
        """
        return None

    def score(self, ctx, dataset, loader) -> float:
        """Validation/test figure (percent) of ``ctx.model`` at the applied setting.

        Top-1 over ``loader`` by default; episodic methods score few-shot episodes.
        """
        from ..evaluate import evaluate
        return evaluate(ctx.model, loader)["top1"]

    # --- training --------------------------------------------------------------
    def setup(self, ctx) -> None:
        """After model/optimizer exist (and after resume), before the first epoch."""

    def param_groups(self, model: nn.Module) -> list[dict] | Iterable:
        return model.parameters()

    def epoch_batches(self, ctx, epoch: int) -> Iterable:
        return ctx.train_loader

    @abstractmethod
    def train_step(self, ctx, batch) -> dict[str, float]:
        """Compute gradients for one optimizer step (via ``ctx.backward``).

        Returns at least ``loss``, ``acc`` and ``n`` (sample-passes).
        """

    def before_optimizer_step(self, ctx) -> None:
        """Gradients are final (DDP-averaged); last chance to edit them."""

    def end_epoch(self, ctx, epoch: int) -> dict[str, Any]:
        return {}

    def finish(self, ctx) -> None:
        """After the last epoch, before the final test and save (e.g. measure statistics)."""

    def done(self, ctx) -> bool:
        """Stop early (e.g. a target reached); the engine still tests and saves."""
        return False

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def metadata(self, ctx) -> dict[str, Any]:
        """Extra ``mbq.*`` checkpoint metadata."""
        return {}

    # --- helpers for subclasses ----------------------------------------------------
    @staticmethod
    def ce_step(ctx, model: nn.Module, batch, scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
        """Forward + cross-entropy + backward; returns (loss, logits) detached."""
        with ctx.autocast():
            logits = model(batch.x)
            loss = F.cross_entropy(logits, batch.y)
        ctx.backward(loss * scale)
        return loss.detach(), logits.detach()


def accuracy(logits: torch.Tensor, y: torch.Tensor) -> float:
    return (logits.argmax(1) == y).float().mean().item() * 100.0
