"""Options of ``--method mebqat`` (bit-width-adaptive QAT as meta-learning)."""
from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from ._bittasks import BitTaskOptions
from ._multibit import PACT_DEFAULT

# cap on the norm of the mean task gradient with the large-batch step: every task pushes the
# one shared BN affine, and at the peak of the warm-up a loss spike drove the BN shifts far
# enough (norm 0 -> 4.2 in 13 steps at seed 1) to stall training for half the run; capped, the
# shifts grew to 0.6 and there was no spike. Norms of a batch-256 step are 0.8-3.6 (emq caps
# the sum of its widths' gradients, at 2 above batch 128)
LARGE_BATCH_GRAD_CLIP = 1.0


class MEBQATOptions(BitTaskOptions):
    """Tasks are (w, a) pairs drawn from the valid pairs of ``--bits`` x ``--act-bits-candidates``."""

    # shared flags this method defaults differently (applied unless given explicitly)
    # SGD, not the paper code's AdamW 1e-3: AdamW leaves clamp-activation models far from
    # converged on short schedules. 0.2 at batch 128, not the shared 0.1: the loss is a mean
    # over tasks where anyprec sums its widths (2 bits: 94.73 at 0.1, 96.44 at 0.2; docs/mebqat.md)
    # the shared PACT clip, not anyprec's per-width one: pact_width gained 0.4 at 2 bits on
    # {2,4,8} but cost up to 3.8 points with 1 bit in the list (docs/benchmarks.md)
    train_defaults: ClassVar[dict] = dict(PACT_DEFAULT, bits=[2, 3, 4, 5, 6, 7, 8, 16, 32],
                                          **{"optim.lr": 0.2})
    # the step grows linearly above batch 128, warmed up over a tenth of the run and its
    # gradient norm capped at LARGE_BATCH_GRAD_CLIP, and by the square root below
    # (docs/benchmarks.md, "mebqat's step across batch sizes"). Batch 256, 2 bits at seeds
    # 0 / 1 / 2: 0.4 cold diverged (17.5%); 0.283 (sqrt) 93.83 / 52.23 / 92.14; 0.4 warmed up
    # 95.15 / 78.48 / 93.65; warmed up and capped 95.53 / 94.70 / 95.00 (anyprec 95.00 /
    # 93.32 / 94.99). Batch 64: 0.141 (sqrt) 97.12, 0.1 (linear) 96.78. At 128 a warm-up cost
    # 1.1 at 2 bits.
    lr_batch_rule: ClassVar[str | None] = "sqrt_below"
    large_batch_grad_clip: ClassVar[float | None] = LARGE_BATCH_GRAD_CLIP

    meta_batch: int = Field(4, ge=1, description="tasks per mini-batch, the guaranteed ones included; at most one per valid pair")
    # on by default, as in the paper's ResNet-20 code: drawn, (1, 1) was in a fifth of the
    # steps with --bits 1,2,4,8,32 and 1 bit ended 8.16 below anyprec; guaranteed, 0.19 below
    guarantee_w1a1: bool = Field(True, description="put (1, 1) in every meta-batch when 1 is a candidate")
    kd: bool = Field(True, description="self-distillation from the FP pass of the same weights")
    bn_mode: Literal["batch", "recalibrate"] = Field(
        "recalibrate", description="batch: no running stats, eval uses the test batch's statistics "
                                   "(paper); recalibrate: re-estimate BN stats at each pair before eval")
    recal_batches: int = Field(10, ge=1, description="training batches used to re-estimate BN stats (recalibrate)")
