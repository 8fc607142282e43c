"""Option fields shared by every method that samples (weight, activation) tasks."""
from __future__ import annotations

from pydantic import Field, field_validator

from ...config import MethodOptions, parse_bits


class BitTaskOptions(MethodOptions):
    """Candidate weight widths come from ``--bits``; FP is always a candidate."""

    act_bits_candidates: list[int] | None = Field(
        None, description="activation widths to draw from, e.g. 2,4,8,fp (default: the --bits set)")
    grad_clamp: float = Field(10.0, gt=0, description="clamp every averaged gradient element to ±this")

    @field_validator("act_bits_candidates", mode="before")
    @classmethod
    def _acts(cls, v):
        if v is None:
            return None
        return parse_bits(v, allow_all=False, name="--act-bits-candidates")
