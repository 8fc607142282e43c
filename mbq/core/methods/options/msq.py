"""``mbq train --method msq`` options (torch-free)."""
from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, model_validator

from ._step import SingleModelStepOptions


# the single-model step, shared with fp and qat (_step.py): at the shared 0.1 the x16 model
# ended 1.5-2.2 points below fp in four 2-epoch cells
class MSQOptions(SingleModelStepOptions):
    """MSQ: RoundClamp weights, LSB-residual regularizer, Hessian-guided bit pruning."""

    # one range per layer before w_scale existed
    recorded_in_quant: ClassVar[dict] = {"weight_scale": ("w_scale", "tensor")}

    target_compression: float = Field(
        16.0, ge=1.0, description="stop pruning once 32*sum(N)/sum(bits*N) reaches this (16 = 2-bit average)")
    init_bits: int = Field(8, ge=2, le=8, description="weight bits every quantized layer starts at")
    min_bits: int = Field(2, ge=2, le=8, description="no layer is pruned below this")
    weight_scale: Literal["channel", "tensor"] = Field(
        "channel", description="RoundClamp range s: max|w| per output channel (channel) or per layer (tensor)")
    lsb_lambda: float = Field(
        100.0, ge=0, description="strength of the LSB regularizer R = sum|L_k| / N_total (0 = prune on rates alone)")
    prune_interval: int = Field(1, ge=1, description="epochs between pruning rounds")
    prune_threshold: float = Field(
        0.3, ge=0.0, le=1.0, description="a layer loses k bits when its LSB non-zero rate is below this")
    prune_deadline: float = Field(
        0.6, gt=0.0, le=1.0, description="fraction of the epochs after which a forced sorted round meets the target")
    hessian: bool = Field(True, description="Hessian-guided k (k=1 above mean sensitivity, k=2 at or below); "
                                            "--no-hessian prunes --uniform-k bits everywhere")
    uniform_k: int = Field(1, ge=1, le=6, description="bits pruned per round with --no-hessian")
    k_sensitive: int = Field(1, ge=1, le=6, description="k for layers above the mean sensitivity")
    k_insensitive: int = Field(2, ge=1, le=6, description="k for layers at or below the mean sensitivity")
    hessian_probes: int = Field(16, ge=1, description="Hutchinson probes per sensitivity estimate")
    hessian_batches: int = Field(1, ge=1, description="training batches the Hessian is averaged over")
    prune_first_last: bool = Field(
        True, description="quantize and prune the first conv / last linear too (else they keep --first-last-bits)")

    @model_validator(mode="after")
    def _bits_order(self):
        if self.min_bits > self.init_bits:
            raise ValueError(f"--min-bits {self.min_bits} is above --init-bits {self.init_bits}")
        return self
