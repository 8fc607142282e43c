"""Options of ``--method anyprec`` (Any-Precision DNN, Yu et al. AAAI 2021). Torch-free."""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from ._multibit import MultiBitOptions


class AnyPrecOptions(MultiBitOptions):
    """Switchable BN per trained width, every width on every batch, recursive KD."""

    eval_bits: Literal["all", "trained"] | list[int] = Field(
        "trained", description="widths validated each epoch and tested at the end: trained, all "
                               "(untrained widths get BN re-calibration), or a list such as 2,3,4")
    kd: Literal["recursive", "none"] = Field(
        "recursive", description="recursive: each lower width learns from the next-higher width's "
                                 "output (soft cross-entropy); none: cross-entropy at every width")
    calib_batches: int = Field(
        20, ge=1, description="training batches used to re-estimate BN statistics of an untrained width")
