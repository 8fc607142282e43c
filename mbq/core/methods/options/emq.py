"""Options of ``--method emq`` (Kim et al., NeurIPS 2025). Torch-free.

Every field is a ``mbq train --method emq`` flag; see docs/emq.md.
"""
from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field, field_validator

from ...defaults import REF_BATCH
from ._multibit import PACT_DEFAULT, MultiBitOptions

DEFAULT_FRACTION = 0.2  # the paper's operating point, for runs of >= 10 epochs
# step at batch 128 and f = 1 (scaled by 1 / sqrt(f)): 0.2, as anyprec's, not Any-Precision's 0.1.
# Against 0.1 on one machine: 1 bit with --bits 1,32 86.95 -> 94.05, 2 bits at the centre cell
# 96.87 -> 97.20, f = 0.2 at 10 epochs 98.61 / 98.99 / 99.03 -> 98.77 / 99.23 / 99.16; it cost
# 0.4-1.0 at 5 000 images and up to 0.6 at 4 / 8 bits at width 0.5 (docs/benchmarks.md)
BASE_LR = 0.2
WARMUP_FRACTION = 0.05  # of the run's steps (one epoch was half of a 2-epoch run)
MIN_CORESET_BATCH = 16  # BatchNorm statistics of a smaller batch are too noisy
# cap on the norm of the summed children's gradient: every width pushes the one shared BN
# affine, and without a cap the first steps of short or large-batch runs diverge
# (batch 256, 2 epochs: 28% top-1 at every width; capped: 96.6 / 95.4 / 96.5, docs/emq.md).
# 2 where each width trains on whole batches of 128 or more (batch 128 at f = 1, 2 epochs:
# width 0.5 95.90 / 96.93 / 96.80 -> 96.28 / 97.72 / 97.77 at 2 / 4 / 8 bits, 5 000 images
# 4 / 8 bits +0.7 / +1.0; ahead in 25 of 27 seed-width pairs over three seeds and three cells;
# batch 256, seeds 1 / 2: 2 bits 92.54 / 89.43 at 5, 96.19 / 96.12 at 2)
GRAD_CLIP = 2.0
# 5 where a width's batch (f x --batch-size) is smaller and the step did not grow with the batch:
# a smaller batch's gradient is noisier and its norm larger, and 2 cost the 2 bits of batch 64
# (97.65 -> 97.39) and of f = 0.2 at 10 epochs (98.77 -> 98.64) (docs/benchmarks.md)
SMALL_BATCH_GRAD_CLIP = 5.0
# images on which training's end measures the BN statistics of every width it did not train: the
# interpolated estimate can miss badly where a width's activation quantization shifts a
# layer's statistics out of its neighbours' range (5 000 images, seed 1: 3 bits 63.90, 95.55
# from 256 images, 95.66 from 2 560; docs/emq.md)
UNTRAINED_BN_IMAGES = 512
SCORES = ("el2n", "grand", "entropy", "forgetting", "random")
SAMPLINGS = ("weighted", "stratified", "topk", "random")


def auto_fraction(epochs: int) -> float:
    """The default coreset fraction: two passes over the data per width, 0.2 at most."""
    return round(min(1.0, max(DEFAULT_FRACTION, 2.0 / max(1, epochs))), 4)


def default_grad_clip(fraction: float, batch_size: int) -> float:
    """The default cap: GRAD_CLIP where a width's batch holds REF_BATCH images or more, or where
    the step grew with --batch-size (above REF_BATCH); SMALL_BATCH_GRAD_CLIP otherwise."""
    if batch_size > REF_BATCH or fraction * batch_size >= REF_BATCH:
        return GRAD_CLIP
    return SMALL_BATCH_GRAD_CLIP


class EMQOptions(MultiBitOptions):
    """Shared BN + weight bias correction + bit-wise coreset sampling."""

    # one clip for every width, not anyprec's clip scaled per width: EMQ serves widths it never
    # trained, and a clip no trained width used cost them more than a point at 10 epochs
    # (3 / 5 bits 97.27 / 97.56 against 98.94 / 99.01 shared; docs/benchmarks.md)
    train_defaults: ClassVar[dict] = dict(MultiBitOptions.train_defaults, **PACT_DEFAULT)
    # a run begun before --final-bn measured only its untrained widths after training
    unrecorded_defaults: ClassVar[dict] = dict(MultiBitOptions.unrecorded_defaults, final_bn="untrained")

    @classmethod
    def run_defaults(cls, options: dict, epochs: int, batch_size: int = REF_BATCH,
                     arch: str | None = None, bits: list[int] | None = None) -> tuple[dict, dict]:
        """The coreset fraction and the optimizer defaults that go with it.

        Without --coreset-fraction (or a coreset file) each width trains on
        max(0.2, min(1, 2 / epochs)) of the data per epoch: at least two passes over the
        data per width in all, below which a width is short of images, not of steps
        (docs/emq.md, "Choosing the defaults"). Each width's batch is f x --batch-size, so
        an epoch has as many steps as plain training; the LR at batch 128 is BASE_LR / sqrt(f)
        and the decay 5e-4 / f (f = 1: anyprec's 0.2 and 5e-4). The summed gradient's
        norm is capped as ``default_grad_clip`` says (--grad-clip 0 turns the cap off).
        """
        options = dict(options)
        if "coreset_fraction" not in options and not options.get("coreset"):
            options["coreset_fraction"] = auto_fraction(epochs)
            options["fraction_is_auto"] = True
        try:
            f = float(options.get("coreset_fraction", DEFAULT_FRACTION))
        except (TypeError, ValueError):
            f = DEFAULT_FRACTION  # validation names the bad value
        f = min(max(f, 0.1), 1.0)  # below 0.1 the rule would ask for LR > 0.63 and decay > 5e-3
        return options, dict(cls.train_defaults, **{"optim.lr": round(BASE_LR / f ** 0.5, 4),
                                                    "optim.weight_decay": 5e-4 / f,
                                                    "optim.warmup_fraction": WARMUP_FRACTION,
                                                    "optim.grad_clip": default_grad_clip(f, batch_size)})

    wbc: bool = Field(True, description="weight bias correction: match each quantized filter's "
                                        "mean/std to the FP path's, at every width")
    fp_act: Literal["clamp", "identity"] = Field(
        "clamp", description="FP-path activations with the clamp or PACT quantizer: clip to [0, 1] or [0, alpha] like "
                             "every quantized width (one shared BN fits all widths) or pass unchanged")
    wbc_detach: bool = Field(False, description="treat the WBC statistics as constants in backward")
    wbc_per_channel: bool = Field(True, description="WBC statistics per output channel (else per tensor)")
    bn_stats: Literal["per-width", "batch", "top"] = Field(
        "per-width", description="shared-BN running statistics: one per trained width under the one shared "
                             "affine, every width's measured at the end of training (per-width, see "
                             "--untrained-bn-images, --final-bn); one "
                             "estimate for all widths (batch); or only the highest width normalises with its batch and the "
                             "lower widths train against the running statistics, as in eval (top)")
    untrained_bn_images: int = Field(
        UNTRAINED_BN_IMAGES, ge=0,
        description="with --bn-stats per-width: at the end of training, measure the BN statistics of "
                    "the widths --final-bn names (every width by default; the untrained ones are 3, 5-7, "
                    "1, 16, FP of a 2,4,8 model) on this many training images, forward passes only; 0 "
                    "measures none and interpolates the untrained widths from the trained ones (no data)")
    final_bn: Literal["all", "untrained"] = Field(
        "all", description="with --bn-stats per-width: the widths whose BN statistics are measured after "
                           "training on --untrained-bn-images images: every width (all), or only those not "
                           "trained (untrained; the trained ones keep training's running averages, which lag "
                           "the final weights in short runs)")
    child_loss: Literal["mean", "sum"] = Field(
        "sum", description="combine the widths' losses into one step: sum (Any-Precision's; every "
                           "width steps as it would alone) or mean (the step does not grow with the "
                           "number of widths)")
    kd: Literal["none", "fp", "recursive"] = Field(
        "none", description="add soft cross-entropy from the FP path (fp) or the next-higher "
                            "trained width (recursive), computed on each child's own batch")
    coreset_fraction: float = Field(
        DEFAULT_FRACTION, description="fraction of the training set each width trains on per epoch "
                                      "(1 = no coreset; default max(0.2, min(1, 2 / --epochs)))")
    fraction_is_auto: bool = Field(False, json_schema_extra={"hidden": True},
                                   description="coreset_fraction came from the epochs rule")
    coreset_warmup: int = Field(
        1, ge=0, description="warm-up epochs before the per-bit scores are computed (see --coreset-warmup-data)")
    coreset_warmup_data: Literal["subset", "full"] = Field(
        "subset", description="warm-up epochs train each width on a uniform random subset of "
                              "--coreset-fraction (subset, the coreset's cost) or on all data (full)")
    coreset_score: Literal["el2n", "grand", "entropy", "forgetting", "random"] = Field(
        "el2n", description="per-sample importance: el2n, grand, entropy, forgetting or random")
    coreset_sampling: Literal["weighted", "stratified", "topk", "random"] = Field(
        "weighted", description="per-epoch draw: weighted (prop. to score plus its mean, without "
                                "replacement), stratified (evenly over score ranges), topk (fixed "
                                "highest scores) or random (uniform; no scoring pass)")
    coreset_uniform_mix: float = Field(
        0.5, ge=0, le=1, description="weighted draws: share of the probability spread uniformly "
                                     "(0 = proportional to the score alone)")
    coreset_score_pool: float = Field(
        2.0, gt=0, description="score a random pool of this many coreset sizes per scoring pass "
                               "(the rest get the pool's mean score); pool >= 1 / fraction scores all")
    coreset_rescore_every: int = Field(
        0, ge=0, description="recompute the scores every K coreset epochs (0 = never)")
    coreset: Path | None = Field(
        None, description="precomputed coreset file from mbq select-coreset (skips the warm-up)")
    coreset_batch: int | None = Field(
        None, ge=1, description="each width's mini-batch on its coreset (default: --batch-size x "
                                "--coreset-fraction, at least 16, so an epoch has as many steps as "
                                "plain training)")

    def step_batch(self, batch_size: int) -> int:
        if self.coreset_batch is not None:
            return self.coreset_batch
        if self.coreset_fraction >= 1:
            return batch_size
        return min(batch_size, max(MIN_CORESET_BATCH, round(batch_size * self.coreset_fraction)))

    @field_validator("coreset_fraction")
    @classmethod
    def _fraction_ok(cls, v):
        if not 0 < v <= 1:
            raise ValueError(f"--coreset-fraction must be in (0, 1], got {v}")
        return v
