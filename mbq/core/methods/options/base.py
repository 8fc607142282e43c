from __future__ import annotations

from pydantic import Field

from ...config import MethodOptions


class FPOptions(MethodOptions):
    """Float training has no options of its own."""


class QATOptions(MethodOptions):
    """QAT at one width: ``--bits N`` (+ ``--act-bits``); quantizer flags are shared."""

    scheme: dict[str, dict[str, int]] | None = Field(
        None, description="per-layer {layer: {w, a}}; set from a mixed-precision --init checkpoint")
