"""``mbq train --method bsq`` options (torch-free)."""
from __future__ import annotations

from pydantic import Field, model_validator

from ...config import MethodOptions


class BSQOptions(MethodOptions):
    """BSQ baseline: every weight as trainable bit planes, group lasso, periodic re-binarisation."""

    init_bits: int = Field(8, ge=2, le=8, description="bits (1 sign + n-1 magnitude planes) every layer starts at")
    min_bits: int = Field(2, ge=2, le=8, description="planes are never dropped below this width")
    group_lasso: float = Field(
        5e-3, ge=0, description="strength of the bit-plane group lasso (weighted by each layer's N*bits share)")
    requant_interval: int = Field(1, ge=1, description="epochs between re-binarisation and plane dropping")

    @model_validator(mode="after")
    def _bits_order(self):
        if self.min_bits > self.init_bits:
            raise ValueError(f"--min-bits {self.min_bits} is above --init-bits {self.init_bits}")
        return self
