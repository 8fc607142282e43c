"""Options of ``--method emq`` (Kim et al., NeurIPS 2025). Torch-free.

Every field is a ``mbq train --method emq`` flag; see docs/emq.md.
"""
from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field, field_validator

from ._multibit import MultiBitOptions

SCORES = ("el2n", "grand", "entropy", "forgetting", "random")
SAMPLINGS = ("weighted", "stratified", "topk", "random")


class EMQOptions(MultiBitOptions):
    """Shared BN + weight bias correction + bit-wise coreset sampling."""

    # each width takes ~f of the steps of plain training: every child steps at 0.2 (losses summed),
    # warmed up over one epoch, with 5x the usual decay per unit LR (so 5e-4 per step); on
    # benchmarks/emq.py's five-width run this beat 0.1/0.3/0.5 with averaged losses by 0.7-2.4 points
    train_defaults: ClassVar[dict] = {"optim.lr": 0.2, "optim.weight_decay": 2.5e-3, "optim.warmup_epochs": 1}

    wbc: bool = Field(True, description="weight bias correction: match each quantized filter's "
                                        "mean/std to the FP path's, at every width")
    fp_act: Literal["clamp", "identity"] = Field(
        "clamp", description="FP-path activations with the clamp quantizer: clamp to [0, 1] like "
                             "every quantized width (one shared BN fits all widths) or pass unchanged")
    wbc_detach: bool = Field(False, description="treat the WBC statistics as constants in backward")
    wbc_per_channel: bool = Field(True, description="WBC statistics per output channel (else per tensor)")
    bn_stats: Literal["per-width", "batch", "top"] = Field(
        "per-width", description="shared-BN running statistics: one per trained width under the one shared "
                             "affine, untrained widths interpolated, no data needed (per-width); one "
                             "estimate for all widths (batch); or only the highest width normalises with its batch and the "
                             "lower widths train against the running statistics, as in eval (top)")
    child_loss: Literal["mean", "sum"] = Field(
        "sum", description="combine the widths' losses into one step: sum (Any-Precision's; every "
                           "width steps as it would alone) or mean (the step does not grow with the "
                           "number of widths)")
    kd: Literal["none", "fp", "recursive"] = Field(
        "none", description="add soft cross-entropy from the FP path (fp) or the next-higher "
                            "trained width (recursive), computed on each child's own batch")
    coreset_fraction: float = Field(
        0.2, description="fraction of the training set each width trains on per epoch (1 = no coreset)")
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
    coreset_rescore_every: int = Field(
        0, ge=0, description="recompute the scores every K coreset epochs (0 = never)")
    coreset: Path | None = Field(
        None, description="precomputed coreset file from mbq select-coreset (skips the warm-up)")

    @field_validator("coreset_fraction")
    @classmethod
    def _fraction_ok(cls, v):
        if not 0 < v <= 1:
            raise ValueError(f"--coreset-fraction must be in (0, 1], got {v}")
        return v
