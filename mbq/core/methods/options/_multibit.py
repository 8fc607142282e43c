"""Options shared by the multi-bit methods (emq, anyprec). Torch-free."""
from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, field_validator

from ...config import MethodOptions, parse_bits


def parse_eval_bits(v):
    """``all`` | ``trained`` | a list such as ``2,3,4`` (kept as a list of ints)."""
    if v is None:
        return v
    if isinstance(v, str) and v.strip().lower() in ("all", "trained"):
        return v.strip().lower()
    return parse_bits(v, allow_all=False, name="--eval-bits")


# PACT activations by default for every quantized-training method: a fixed [0, 1] clamp
# saturates much of each BN output (docs/benchmarks.md: anyprec {2,4,8} after 2 epochs on 10k
# MNIST images, 92.5-95.0 with the clamp, 96.1-97.6 with PACT)
PACT_DEFAULT: dict = {"quant.act": "pact"}
# anyprec scales its one clip per width (PACTWidthAct): a shared clip left 2-bit activations
# with levels 0/1.9/3.8/5.7 for BN outputs of unit scale. emq, mebqat and the few-shot
# methods measured worse with it (docs/benchmarks.md, "PACT's clip across widths")
PACT_WIDTH_DEFAULT: dict = {"quant.act": "pact_width"}


class MultiBitOptions(MethodOptions):
    train_defaults: ClassVar[dict] = dict(PACT_WIDTH_DEFAULT)

    fp_path: Literal["tanh", "identity"] = Field(
        "tanh", description="FP path (32 bits): Any-Precision's E*tanh(w)/max|tanh(w)| or the raw weight")
    eval_bits: Literal["all", "trained"] | list[int] = Field(
        "all", description="widths validated each epoch and tested at the end: all (1..8 and fp), "
                           "trained, or a list such as 2,3,4 (emq validates only the trained ones of "
                           "all: the others get their statistics at training's end)")

    @field_validator("eval_bits", mode="before")
    @classmethod
    def _eval_bits_ok(cls, v):
        return parse_eval_bits(v)
