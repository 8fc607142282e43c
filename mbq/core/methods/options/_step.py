"""The SGD step of the single-model methods (fp, qat, msq): 0.2 per 128 images, linear in
the batch, warmed up over the first tenth of the run, the gradient norm capped at 2.

At the shared 0.1, fp and qat W4A4 ended below 97% in three 2-epoch cells (cnn, width 0.5,
batch 256) and msq's x16 model 1.5-2.2 points below fp in four; 0.2 alone sent the cnn and
batch 256 (0.4) towards chance, because a few early large-gradient steps break it. Warmed up
and capped, 0.2 lifted fp by 0.02-0.97 and qat by 0.25-0.76 in every such cell but one
(docs/benchmarks.md, "msq's step" and "fp's and qat's step").
"""
from __future__ import annotations

LR = 0.2
WARMUP_FRACTION = 0.1
GRAD_CLIP = 2.0
SINGLE_MODEL_STEP = {"optim.lr": LR, "optim.warmup_fraction": WARMUP_FRACTION, "optim.grad_clip": GRAD_CLIP}
