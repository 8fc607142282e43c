from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from ...config import MethodOptions
from ._multibit import PACT_DEFAULT
from ._step import LR_BATCH_RULE, SINGLE_MODEL_STEP


class FPOptions(MethodOptions):
    """Float training has no options of its own."""

    train_defaults: ClassVar[dict] = dict(SINGLE_MODEL_STEP)
    lr_batch_rule: ClassVar[str] = LR_BATCH_RULE


class QATOptions(MethodOptions):
    """QAT at one width: ``--bits N`` (+ ``--act-bits``); quantizer flags are shared."""

    # PACT activations (the sat preset): a fixed [0, 1] clamp saturates much of each BN output
    # and cost 1.6 points at W4A4 after 2 epochs on 10k MNIST images (docs/benchmarks.md)
    train_defaults: ClassVar[dict] = dict(PACT_DEFAULT, **SINGLE_MODEL_STEP)
    lr_batch_rule: ClassVar[str] = LR_BATCH_RULE

    scheme: dict[str, dict[str, int]] | None = Field(
        None, description="per-layer {layer: {w, a}}; set from a mixed-precision --init checkpoint")
