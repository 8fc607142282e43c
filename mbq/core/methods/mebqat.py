"""MEBQAT (Youn et al., ECCV 2022): bit-width-adaptive QAT as meta-learning.

A task is a (weight bits, activation bits) pair. Each step runs
``--meta-batch`` tasks on the same mini-batch — (FP, FP) first, (1, 1) when 1
is a candidate (``--no-guarantee-w1a1`` turns that off), the rest drawn uniformly from the valid pairs — with
self-distillation from the FP pass, averages the task gradients per
parameter over the tasks that reached it, clamps them element-wise and takes
one AdamW step (MAML with zero inner steps). BN and quantizer parameters are
shared by every width.
"""
from __future__ import annotations

import random

import torch
from torch import nn
from torch.nn import functional as F

from ..bitpairs import sample_tasks
from ..config import QuantConfig
from ..evaluate import recalibrate_bn
from ..quant import FP_BITS, set_bits
from ._bittasks import candidate_pairs, check_room, warm_up_quantizers
from ._bn import use_batch_statistics
from ._task_grads import TaskGradients, clamp_grads, usage_masks
from .base import Method, Setting, accuracy

FP_PAIR = (FP_BITS, FP_BITS)


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """H(p_T, p_S), temperature 1; the teacher is detached (self-distillation)."""
    p_t = F.softmax(teacher_logits.detach().float(), dim=1)
    return -(p_t * F.log_softmax(student_logits.float(), dim=1)).sum(1).mean()


class MEBQATMethod(Method):
    name = "mebqat"

    def __init__(self, cfg, opts):
        super().__init__(cfg, opts)
        self.w_cands, self.a_cands, self.pairs = candidate_pairs(cfg, opts, "mebqat")
        self.guaranteed = [FP_PAIR]
        if opts.guarantee_w1a1 and (1, 1) in self.pairs:
            self.guaranteed.append((1, 1))
        check_room(opts.meta_batch, self.guaranteed, self.pairs,
                   "--no-guarantee-w1a1" if (1, 1) in self.guaranteed else None)
        # never a task twice in one step: a repeat only doubles one pair's weight in the mean
        # (--bits 1,32 has 3 pairs; 4 tasks put (1, 32) in twice and 1 bit ended 3.8 below anyprec)
        self.meta_batch = min(opts.meta_batch, len(self.pairs))
        self._rng = random.Random(f"mebqat:{cfg.seed}")

    # --- model and settings -----------------------------------------------------------
    def quant_config(self) -> QuantConfig:
        return self.cfg.quant.model_copy(update={"w_bits": FP_BITS, "a_bits": FP_BITS})

    def build_model(self) -> nn.Module:
        model = super().build_model()
        return use_batch_statistics(model) if self.opts.bn_mode == "batch" else model

    def trained_bits(self) -> list[int]:
        return list(self.w_cands)

    def eval_settings(self) -> list[Setting]:
        diag = [Setting(w, w) for w in self.w_cands if w != FP_BITS and (w, w) in self.pairs]
        return [Setting(FP_BITS, FP_BITS)] + diag

    def supports_bits(self, w: int) -> bool:
        return w in self.w_cands

    def supports_pair(self, w: int, a: int) -> bool:
        return (w, a) in self.pairs

    def prepare_eval(self, model, s: Setting, calib, recalibrated: int = 0) -> str | None:
        if self.opts.bn_mode == "batch":
            return ("mebqat --bn-mode batch: BN normalises with each test batch's statistics "
                    "(results depend on --batch-size)")
        if recalibrated:
            return (f"mebqat: BN statistics re-estimated at each pair on {recalibrated} training "
                    "batches (--recalibrate-bn)")
        if calib is None:
            return ("mebqat: no training data to re-estimate BN statistics with; the stored "
                    "running statistics are used as they are")
        recalibrate_bn(model, calib, self.opts.recal_batches)
        return (f"mebqat: BN statistics re-estimated at each pair on {self.opts.recal_batches} "
                "training batches (--bn-mode recalibrate)")

    def metadata(self, ctx) -> dict:
        return {"mbq.pairs": [list(p) for p in self.pairs]}

    # --- training ---------------------------------------------------------------------
    def setup(self, ctx) -> None:
        from .._distributed import broadcast_model

        x = next(iter(ctx.loader(shuffle=True, augment=False, seed_offset=104729))).x
        warm_up_quantizers(ctx.model, self.pairs, x)
        if self.meta_batch < self.opts.meta_batch:
            ctx.report("log", message=f"mebqat: {self.meta_batch} tasks per step, one per valid pair "
                                      f"(--meta-batch {self.opts.meta_batch} would repeat a pair)")
        broadcast_model(ctx.model)

    def epoch_batches(self, ctx, epoch: int):
        # one task stream per epoch, the same on every rank: resumable and DDP-consistent
        self._rng = random.Random(f"mebqat:{self.cfg.seed}:{epoch}")
        return ctx.train_loader

    def sample(self) -> list[tuple[int, int]]:
        return sample_tasks(self.pairs, self.meta_batch, self.guaranteed, self._rng)

    def train_step(self, ctx, batch) -> dict[str, float]:
        model = ctx.model
        grads = TaskGradients(model)
        teacher = None
        losses, accs = [], []
        for w, a in self.sample():
            set_bits(model, w, a)
            masks = usage_masks(model)
            with ctx.autocast():
                logits = model(batch.x)
                loss = F.cross_entropy(logits, batch.y)
                if (w, a) != FP_PAIR and teacher is not None and self.opts.kd:
                    loss = loss + kd_loss(logits, teacher)
            ctx.backward(loss)
            grads.add_from_grads(model, masks)
            if (w, a) == FP_PAIR:
                teacher = logits.detach()
            losses.append(loss.item())
            accs.append(accuracy(logits.detach(), batch.y))
        grads.write()
        return {"loss": sum(losses) / len(losses), "acc": sum(accs) / len(accs), "n": len(batch.y),
                "backward_passes": float(len(losses))}

    def before_optimizer_step(self, ctx) -> None:
        clamp_grads(ctx.model, self.opts.grad_clamp)
