from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from ._multibit import PACT_DEFAULT
from ._step import SINGLE_MODEL_STEP, SingleModelStepOptions


class FPOptions(SingleModelStepOptions):
    """Float training has no options of its own."""


class QATOptions(SingleModelStepOptions):
    """QAT at one width: ``--bits N`` (+ ``--act-bits``); quantizer flags are shared."""

    # PACT activations (the sat preset): a fixed [0, 1] clamp saturates much of each BN output
    # and cost 1.6 points at W4A4 after 2 epochs on 10k MNIST images (docs/benchmarks.md)
    train_defaults: ClassVar[dict] = dict(PACT_DEFAULT, **SINGLE_MODEL_STEP)

    scheme: dict[str, dict[str, int]] | None = Field(
        None, description="per-layer {layer: {w, a}}; set from a mixed-precision --init checkpoint")
