"""Options of ``--method mebqat`` (bit-width-adaptive QAT as meta-learning)."""
from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from ._bittasks import BitTaskOptions
from ._multibit import PACT_DEFAULT

# every run's step is warmed up over a tenth of it and its gradient norm capped at 1: every
# task pushes the one shared BN affine, and a spike early in the run drove the BN shifts far
# enough (norm 0 -> 4.2 in 13 steps) to stall training for half of it; capped, the shifts
# grew to 0.6. With the cap and warm-up the step can be 0.4, twice the bare limit (0.4 bare
# diverged at 5 000 images and with --bits 1,32), and mebqat reaches anyprec where at 0.2 it
# trailed it by 1.4-3.9 points (docs/benchmarks.md, "mebqat's step, warmed up and capped")
GRAD_CLIP = 1.0
WARMUP_FRACTION = 0.1


class MEBQATOptions(BitTaskOptions):
    """Tasks are (w, a) pairs drawn from the valid pairs of ``--bits`` x ``--act-bits-candidates``."""

    # shared flags this method defaults differently (applied unless given explicitly)
    # SGD, not the paper code's AdamW 1e-3: AdamW leaves clamp-activation models far from
    # converged on short schedules. 0.4 at batch 128, not the shared 0.1: the loss is a mean
    # over tasks where anyprec sums its widths (2 bits: 94.73 at 0.1, 96.44 at 0.2), and with
    # the warm-up and the cap (GRAD_CLIP) 0.4 no longer diverges. The square root of the batch
    # scales it both ways (docs/mebqat.md)
    # the shared PACT clip, not anyprec's per-width one: pact_width gained 0.4 at 2 bits on
    # {2,4,8} but cost up to 3.8 points with 1 bit in the list (docs/benchmarks.md)
    train_defaults: ClassVar[dict] = dict(PACT_DEFAULT, bits=[2, 3, 4, 5, 6, 7, 8, 16, 32],
                                          **{"optim.lr": 0.4, "optim.grad_clip": GRAD_CLIP,
                                             "optim.warmup_fraction": WARMUP_FRACTION})
    lr_batch_rule: ClassVar[str | None] = "sqrt"

    meta_batch: int = Field(4, ge=1, description="tasks per mini-batch, the guaranteed ones included; at most one per valid pair")
    # on by default, as in the paper's ResNet-20 code: drawn, (1, 1) was in a fifth of the
    # steps with --bits 1,2,4,8,32 and 1 bit ended 8.16 below anyprec; guaranteed, 0.19 below
    guarantee_w1a1: bool = Field(True, description="put (1, 1) in every meta-batch when 1 is a candidate")
    kd: bool = Field(True, description="self-distillation from the FP pass of the same weights")
    bn_mode: Literal["batch", "recalibrate"] = Field(
        "recalibrate", description="batch: no running stats, eval uses the test batch's statistics "
                                   "(paper); recalibrate: re-estimate BN stats at each pair before eval")
    recal_batches: int = Field(10, ge=1, description="training batches used to re-estimate BN stats (recalibrate)")
