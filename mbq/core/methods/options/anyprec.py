"""Options of ``--method anyprec`` (Any-Precision DNN, Yu et al. AAAI 2021). Torch-free."""
from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from ._multibit import MultiBitOptions

# cap on the norm of the summed gradient, at every batch: with cross-entropy at every width the
# gradient is the sum of k widths' and the first steps at 0.2 diverged (2 epochs, resnet20 on
# 10 000 images, seeds 0 / 1: every width at 19-23%); capped at 2, 97.60 / 97.96 / 97.99 at
# 2 / 4 / 8 bits. Batch 256 at 0.4 with no warm-up and no cap ended at chance at every width;
# warmed up and capped at 2 it led 0.2 there at every width (2 bits 95.64 against 95.28)
GRAD_CLIP = 2.0


class AnyPrecOptions(MultiBitOptions):
    """Switchable BN per trained width, every width on every batch, recursive KD."""

    # 0.2 per 128 images, not Any-Precision's 0.1: at 0.1 the 2-bit width of short runs fell
    # far behind on some machines (2 epochs, resnet20 width 0.5: 84.40; 5 000 images: 74.55)
    # and 0.2 led at every width of every {2,4,8} cell (docs/benchmarks.md, "anyprec's and EMQ's step")
    train_defaults: ClassVar[dict] = dict(MultiBitOptions.train_defaults,
                                          **{"optim.lr": 0.2, "optim.grad_clip": GRAD_CLIP})
    # above batch 128 the step grows linearly, warmed up over a tenth of the run
    large_batch_grad_clip: ClassVar[float | None] = GRAD_CLIP

    eval_bits: Literal["all", "trained"] | list[int] = Field(
        "trained", description="widths validated each epoch and tested at the end: trained, all "
                               "(untrained widths get BN re-calibration), or a list such as 2,3,4")
    # none, not the paper's recursive KD: a lower width learning from a higher width that is itself
    # still learning trailed capped cross-entropy in every cell measured, 2 to 10 epochs (2 bits:
    # centre 96.95 -> 97.60, width 0.5 95.80 -> 96.59, 5 000 images 94.08 -> 95.30, 10 epochs
    # 99.03 -> 99.13; docs/benchmarks.md, "anyprec's distillation")
    # the default of every anyprec run that began before options were recorded whole
    unrecorded_defaults: ClassVar[dict] = {"kd": "recursive"}
    kd: Literal["recursive", "none"] = Field(
        "none", description="none: cross-entropy at every width; recursive (Any-Precision's recipe): "
                            "each lower width learns from the next-higher width's output (soft "
                            "cross-entropy)")
    calib_batches: int = Field(
        20, ge=1, description="training batches used to re-estimate BN statistics of an untrained width")
