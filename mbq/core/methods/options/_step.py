"""The SGD step of the single-model methods (fp, qat, msq): 0.2 per 128 images, linear in
the batch up to 128 and by its square root above (0.1 at 64, 0.283 at 256), warmed up over
the first tenth of the run, the gradient norm capped at 2.

At the shared 0.1, fp ended below 97% on the cnn, qat W4A4 in three 2-epoch cells (cnn,
width 0.5, batch 256), and msq's x16 model 1.5-2.2 points below fp in four; 0.2 alone sent
the cnn and batch 256 (0.4) towards chance: a few early large-gradient steps break it.
Warmed up and capped, 0.2 lifted fp by 0.37-0.90 and qat by 0.65-0.75 on average over three
seeds in every 2-epoch cell but batch 256, where the linear 0.4 lost 0.17 of each and the
square root's 0.283 gained 0.47 / 0.26 (msq: 0.53 over 0.4). docs/benchmarks.md, "msq's
step" and "fp's and qat's step".
"""
from __future__ import annotations

from typing import ClassVar

from ...config import MethodOptions

LR = 0.2
WARMUP_FRACTION = 0.1
GRAD_CLIP = 2.0
LR_BATCH_RULE = "sqrt_above"
SINGLE_MODEL_STEP = {"optim.lr": LR, "optim.warmup_fraction": WARMUP_FRACTION,
                     "optim.grad_clip": GRAD_CLIP}


class SingleModelStepOptions(MethodOptions):
    """Base of the single-model methods' options: the step above, and its batch rule."""

    train_defaults: ClassVar[dict] = dict(SINGLE_MODEL_STEP)
    lr_batch_rule: ClassVar[str] = LR_BATCH_RULE
